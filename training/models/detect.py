"""Tell SD1, SD2 and SDXL apart from checkpoint keys/shapes or a diffusers folder's configs.

We detect before loading because diffusers' ``from_single_file(config=...)`` does no inference of its own: the
caller picks the config folder, and a wrong pick fails late with an unreadable shape error. For ``.safetensors`` we
read only the header (key names and shapes), so refusing an SDXL file costs milliseconds, not a 7 GB read.

v-prediction cannot be seen in the weights (SD2-512 and SD2-768-v have identical shapes): that is kohya's
``v_parameterization`` flag, or a diffusers folder's ``scheduler_config.json`` ``prediction_type``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.contract.errors import UserError
from training.contract.st_header import read_header

KeyShapes = Mapping[str, Sequence[int]]

UNET = "model.diffusion_model."
SDXL_MARKERS = ("conditioner.embedders.1.", "model.diffusion_model.label_emb.")
OPEN_CLIP_SD2 = "cond_stage_model.model."
CLIP_SD1 = "cond_stage_model.transformer."
CONTEXT_DIM_FAMILY = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}  # what users call them


def detect_family(source: Path | str | Mapping[str, Any] | KeyShapes) -> str:
    """Return ``"sd1"``, ``"sd2"`` or ``"sdxl"`` for a checkpoint file, a diffusers folder or a key->tensor/shape map.

    Raises ``UserError`` when nothing identifies the family.
    """
    if isinstance(source, Mapping):
        family = family_from_shapes(_shapes(source))
        name = "checkpoint"
    else:
        path = Path(source)
        if path.is_dir():
            return family_from_folder(path)
        family = family_from_shapes(read_key_shapes(path))
        name = str(path)
    if family is None:
        raise UserError(f"{name}: not a Stable Diffusion 1.x/2.x/XL checkpoint (no known UNet or text-encoder keys)")
    return family


def read_key_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape. Header only for ``.safetensors`` (no torch needed: the UI detects families too); a pickle has no
    header, so it is read (safely) in full."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    if path.suffix.lower() != ".safetensors":
        from training.models.checkpoint import read_checkpoint

        return _shapes(read_checkpoint(path))
    try:
        header, _ = read_header(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0][:200]})") from e
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def family_from_shapes(shapes: KeyShapes) -> str | None:
    """SDXL markers first, then the UNet's cross-attention width, then which text encoder the file carries.

    The context width is the strongest signal for real models (768 CLIP-L, 1024 OpenCLIP-H, 2048 both SDXL
    encoders); the text-encoder prefix decides for UNets of unusual width (e.g. tiny test models).
    """
    if any(k.startswith(SDXL_MARKERS) for k in shapes):
        return "sdxl"
    dim = context_dim(shapes)
    if dim in CONTEXT_DIM_FAMILY:
        return CONTEXT_DIM_FAMILY[dim]
    if any(k.startswith(OPEN_CLIP_SD2) for k in shapes):
        return "sd2"
    if any(k.startswith(CLIP_SD1) for k in shapes):
        return "sd1"
    return None


def context_dim(shapes: KeyShapes) -> int | None:
    """Input width of the first cross-attention key projection (LDM or diffusers naming)."""
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def family_from_folder(folder: Path) -> str:
    """A diffusers folder: a second text encoder means SDXL; else the UNet's cross-attention width or projection."""
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{folder}: not a diffusers model folder (no model_index.json)")
    if (folder / "text_encoder_2").is_dir():
        return "sdxl"
    unet = _read_json(folder / "unet" / "config.json")
    dim = unet.get("cross_attention_dim")
    if dim in CONTEXT_DIM_FAMILY:
        return CONTEXT_DIM_FAMILY[dim]
    return "sd2" if unet.get("use_linear_projection") else "sd1"


def folder_prediction_type(folder: Path) -> str | None:
    """``prediction_type`` from the folder's scheduler config, or None when it does not say."""
    config = folder / "scheduler" / "scheduler_config.json"
    return _read_json(config).get("prediction_type") if config.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise UserError(f"{path}: missing; the model folder is incomplete") from e
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable JSON ({e})") from e


def _shapes(state: Mapping) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in state.items()}
