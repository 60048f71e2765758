"""Load an SD base model offline: a diffusers folder, a single ``.safetensors``/``.ckpt`` file, or a hub id.

Single files are read once, safely (``read_checkpoint``), and the already-read state dict is handed to diffusers'
per-component single-file loaders with a bundled config-only folder (``assets/models/<family>``). That is what
``StableDiffusionPipeline.from_single_file(path, config=...)`` does internally, but the pipeline entry point only
takes a path and would ``torch.load`` a ``.ckpt`` itself; passing the dict keeps one read and our safe unpickler for
both formats, and never consults the hub. The tokenizer is built from ``assets/clip_tokenizer`` with the family's
pad token (SD1 ``<|endoftext|>``, SD2 ``!``), so nothing is fetched by hub id either.

Family choice: detected from keys/shapes (``detect.py``). kohya's ``v2`` flag decides only where detection cannot
(an unrecognised layout); a flag that contradicts what the file clearly is is refused, because loading would fail
later with a shape error anyway. SDXL is refused until it is supported. v-prediction: the ``v_parameterization``
flag if given, else a diffusers folder's scheduler ``prediction_type``, else epsilon (a single SD2 file is assumed to
be 512-px epsilon; 768-v files need ``v_parameterization = true``, exactly as in kohya).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from training.errors import UserError
from training.models.checkpoint import read_checkpoint
from training.models.detect import family_from_folder, family_from_shapes, folder_prediction_type, read_key_shapes
from training.models.families import TOKENIZER_DIR, Family, family_for

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
HUB_CONFIG_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*.json"]


@dataclass
class BaseModel:
    family: Family
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler  # training noise schedule: the base model's betas, prediction_type per family


def load_base_model(path_or_id: str, v2: bool | None = None, v_parameterization: bool | None = None) -> BaseModel:
    """Load UNet, VAE, text encoder (fp32), tokenizer and training scheduler for an SD1.x/SD2.x base model."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return load_folder(path, v2, v_parameterization)
    if path.is_file():
        detected, state = _detect_file(path)
        family = choose_family(str(path), detected, v2, v_parameterization)
        return load_single_file(path, family, state=state)
    if _looks_like_path(path_or_id):
        raise UserError(f"{path_or_id}: base model not found (no such file or folder)")
    return load_hub(path_or_id, v2, v_parameterization)


def choose_family(where: str, detected: str | None, v2: bool | None, v_parameterization: bool | None,
                  folder_prediction: str | None = None) -> Family:
    """Combine detection with kohya's flags; refuse SDXL and contradictions the user cannot have meant."""
    if detected == "sdxl":
        raise UserError(f"{where}: this is an SDXL checkpoint; SDXL is not supported yet, pick an SD1.x/SD2.x model")
    if detected is None and v2 is None:
        raise UserError(f"{where}: cannot tell whether this is SD1.x or SD2.x; set v2 = true or false")
    is_v2 = detected == "sd2" if detected is not None else bool(v2)
    if v2 is not None and v2 != is_v2:
        what = "SD2.x (OpenCLIP text encoder)" if is_v2 else "SD1.x (CLIP-L text encoder)"
        raise UserError(f"{where}: this is an {what} model but v2 = {str(v2).lower()}; remove v2 or set it to "
                        f"{str(is_v2).lower()}")
    if v_parameterization is None:
        v_parameterization = folder_prediction == "v_prediction"
    return family_for(is_v2, v_parameterization)


def load_single_file(path: Path, family: Family, config_dir: Path | None = None,
                     state: dict[str, torch.Tensor] | None = None) -> BaseModel:
    """Build the components from an LDM-layout single file, fully offline.

    ``state`` is the file's already-read state dict (saves a second read of a pickle); ``config_dir`` replaces the
    bundled ``family.config_dir`` (tests pass a tiny model's own configs).
    """
    where = str(path)
    state = read_checkpoint(path) if state is None else state
    config = str(config_dir or family.config_dir)
    # No torch_dtype: diffusers then casts each tensor to the (fp32) parameter it fills, whereas torch_dtype adds a
    # model.to() that logs a spurious "keep in float32" warning in diffusers 0.42. _check_loaded enforces fp32.
    common = {"config": config, "local_files_only": True}
    try:
        unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
        vae = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
        text_encoder = _text_encoder_from_ldm(state, config)
    except (ValueError, RuntimeError, KeyError) as e:  # shape mismatch, missing component: a wrong/partial file
        raise UserError(f"{where}: does not load as {family.name} ({_first_line(e)})") from e
    for part, model in (("UNet", unet), ("VAE", vae), ("text encoder", text_encoder)):
        _check_loaded(where, part, model)
    scheduler = training_scheduler(Path(config), family)
    return BaseModel(family, unet, vae, text_encoder, build_tokenizer(family), scheduler)


def load_folder(folder: Path, v2: bool | None = None, v_parameterization: bool | None = None,
                source: str | None = None) -> BaseModel:
    """A diffusers folder; ``source`` (a hub id) is where the weights come from when ``folder`` holds configs only."""
    family = choose_family(str(folder), family_from_folder(folder), v2, v_parameterization,
                           folder_prediction_type(folder))
    root = source or str(folder)
    common = {"torch_dtype": torch.float32, "local_files_only": source is None}
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **common)
        tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=source is None)
    except OSError as e:
        raise UserError(f"{root}: incomplete diffusers model ({_first_line(e)})") from e
    return BaseModel(family, unet, vae, text_encoder, tokenizer, training_scheduler(folder, family))


def load_hub(repo_id: str, v2: bool | None = None, v_parameterization: bool | None = None) -> BaseModel:
    """A hub id works only online or when already cached; offline misses become a UserError with the fix."""
    from huggingface_hub import snapshot_download

    try:
        configs = Path(snapshot_download(repo_id, allow_patterns=HUB_CONFIG_PATTERNS))
        return load_folder(configs, v2, v_parameterization, source=repo_id)
    except UserError:
        raise
    except Exception as e:  # offline cache miss, unknown repo, no network, gated repo ...
        raise UserError(f"{repo_id}: not a local file or folder, and the model hub could not provide it "
                        f"({_first_line(e)}); download the model or give a local path") from e


def training_scheduler(config_dir: Path, family: Family) -> DDPMScheduler:
    """DDPM with the base model's own betas (whatever sampler class its folder names); prediction type per family."""
    config = DDPMScheduler.load_config(str(config_dir), subfolder="scheduler")
    return DDPMScheduler.from_config(config, prediction_type=family.prediction_type)


def build_tokenizer(family: Family) -> CLIPTokenizer:
    """The CLIP BPE tokenizer from the bundled vocabulary, padded as the family's original tokenizer pads."""
    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"),
                         pad_token=family.tokenizer_pad, model_max_length=77)


def _text_encoder_from_ldm(state: dict[str, torch.Tensor], config: str) -> CLIPTextModel:
    """diffusers' own LDM -> CLIP conversion (CLIP-L layout for SD1, fused OpenCLIP layout for SD2)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    return create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder", config=config,
                                                torch_dtype=torch.float32, local_files_only=True)


def _check_loaded(where: str, part: str, model: torch.nn.Module) -> None:
    """diffusers silently leaves parameters absent from the file on the meta device; a partial file must not train.
    Also guarantees fp32 weights whatever the file's dtype (the loop casts later)."""
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise UserError(f"{where}: {part} weights missing from the file ({len(missing)} tensors, e.g. {missing[0]})")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()


def _detect_file(path: Path) -> tuple[str | None, dict[str, torch.Tensor] | None]:
    """Detected family (None: unrecognised, kohya's ``v2`` decides) and, for pickles, the state dict already read.

    A ``.safetensors`` header is enough, so an SDXL file is refused before its weights are read.
    """
    suffix = path.suffix.lower()
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise UserError(f"{path}: unknown model file type; use a .safetensors or .ckpt file or a diffusers folder")
    if suffix == ".safetensors":
        return family_from_shapes(read_key_shapes(path)), None
    state = read_checkpoint(path)
    return family_from_shapes({k: v.shape for k, v in state.items()}), state


def _looks_like_path(text: str) -> bool:
    """Hub ids are ``org/name``; anything with a suffix, a leading ./ ~ / or more slashes is a (missing) path."""
    return (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
            or text.lower().endswith(SINGLE_FILE_SUFFIXES))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]
