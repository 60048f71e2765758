"""kohya LoRA module names <-> model module paths, for export (``export.py``), import (``importer.py``) and the
self-check (``self_check.py``).

A kohya module name is ``<prefix>_<dotted path with "." -> "_">``. Turning ``_`` back into ``.`` is ambiguous
(``down_blocks``, ``to_q``, ``conv_shortcut`` contain underscores), so import and verification never parse names:
they enumerate the real model and look the name up in a table built here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

UNET_PREFIX = "lora_unet"
# peft wraps a target in a LoraLayer whose children (base_layer, lora_A.default, ...) are not kohya targets.
_PEFT_CHILDREN = {"base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B",
                  "lora_magnitude_vector"}
_RESNET_LEAVES = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                  "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0"}
_TOP_LEVEL = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "conv_norm_out": "out.0",
              "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def kohya_name(prefix: str, path: str) -> str:
    """``prefix`` + ``_`` + dotted path with every ``.`` replaced (kohya's ``create_modules``)."""
    return f"{prefix}_{path.replace('.', '_')}"


def strip_peft_prefix(path: str) -> str:
    """Path in the bare model: drop a ``get_peft_model`` wrapper prefix if present."""
    return path.removeprefix("base_model.model.")


def uses_sgm_names(family: Any) -> bool:
    """Canonical UNet convention: SGM/LDM names for SDXL (kohya's sdxl_train_network writes them and A1111/ComfyUI
    expect them), diffusers names for SD1/SD2."""
    return bool(getattr(family, "unet_sgm_names", str(getattr(family, "name", "")).startswith("sdxl")))


def te_prefixes(family: Any, count: int) -> list[str]:
    """Canonical kohya prefix per text encoder (family table; ``lora_te`` for a lone encoder)."""
    prefixes = list(getattr(family, "te_prefixes", ()) or ())
    if len(prefixes) >= count:
        return prefixes[:count]
    return ["lora_te"] if count == 1 else [f"lora_te{i + 1}" for i in range(count)]


def te_canonical_path(path: str, model_has_text_model: bool = False) -> str:
    """CLIP path as kohya/A1111/ComfyUI expect it: always under ``text_model.``.

    transformers 5 dropped ``CLIPTextModel.text_model``, so re-insert it unless the model still has that submodule
    (``CLIPTextModelWithProjection``), in which case the path is already canonical.
    """
    path = strip_peft_prefix(path)
    if model_has_text_model or path.startswith("text_model."):
        return path
    return f"text_model.{path}"


def _resnet_leaf(rest: str | None) -> str | None:
    if rest is None:
        return None
    head, _, tail = rest.partition(".")
    leaf = _RESNET_LEAVES.get(head)
    if leaf is None:
        return None
    return f"{leaf}.{tail}" if tail else leaf


def _join(base: str, rest: str | None) -> str:
    return f"{base}.{rest}" if rest else base


def diffusers_to_sgm(path: str, layers_per_block: int = 2, up_has_attention: Mapping[int, bool] | None = None
                     ) -> str | None:
    """Convert a diffusers UNet path to the SGM/LDM one (``input_blocks``/``middle_block``/``output_blocks``);
    ``None`` when it has no SGM counterpart.

    ``up_has_attention[i]`` picks the upsampler sub-index (2 after an attention block, else 1).
    """
    lpb = layers_per_block
    for diff, sgm in _TOP_LEVEL.items():
        if path == diff or path.startswith(diff + "."):
            return sgm + path[len(diff):]
    m = _MID.match(path)
    if m:
        kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "attentions":
            return _join(f"middle_block.{2 * j + 1}", rest)
        leaf = _resnet_leaf(rest)
        return None if leaf is None else f"middle_block.{2 * j}.{leaf}"
    m = _BLOCK.match(path)
    if not m:
        return None
    side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
    if side == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(lpb + 1) * (i + 1)}.0.op" if rest == "conv" else None
        base = f"input_blocks.{1 + (lpb + 1) * i + j}"
    else:
        if kind == "upsamplers":
            k = 2 if (up_has_attention or {}).get(i, False) else 1
            return f"output_blocks.{(lpb + 1) * i + lpb}.{k}.conv" if rest == "conv" else None
        base = f"output_blocks.{(lpb + 1) * i + j}"
    if kind == "attentions":
        return _join(f"{base}.1", rest)
    leaf = _resnet_leaf(rest)
    return None if leaf is None else f"{base}.0.{leaf}"


def _unet_layout(unet_config: Mapping[str, Any] | None, paths: list[str]) -> tuple[int, dict[int, bool]]:
    """layers_per_block and which up blocks have attentions: from the config, else inferred from the paths."""
    cfg = dict(unet_config or {})
    lpb = cfg.get("layers_per_block", 2)
    lpb = int(lpb if isinstance(lpb, int) else lpb[0])
    if "up_block_types" in cfg:
        return lpb, {i: "CrossAttn" in t for i, t in enumerate(cfg["up_block_types"])}
    has_attn = {int(p.split(".")[1]): True for p in paths if re.match(r"^up_blocks\.\d+\.attentions\.", p)}
    return lpb, has_attn


def unet_kohya_names(unet_module_paths: Iterable[str], sgm: bool, unet_config: Mapping[str, Any] | None = None
                     ) -> dict[str, str]:
    """``{kohya name: diffusers path}`` for UNet paths, in the diffusers (``sgm=False``) or SGM convention.

    Paths without an SGM counterpart (``time_proj`` ...) are left out of the SGM table.
    """
    paths = [strip_peft_prefix(p) for p in unet_module_paths]
    lpb, up_attn = _unet_layout(unet_config, paths)
    table: dict[str, str] = {}
    for path in paths:
        name_path = diffusers_to_sgm(path, lpb, up_attn) if sgm else path
        if name_path is not None:
            table[kohya_name(UNET_PREFIX, name_path)] = path
    return table


def target_paths(model: nn.Module) -> list[str]:
    """Paths of every module a kohya LoRA can target: Linear/Conv2d leaves, or the peft layer (LoRA, LoHa, LoKr)
    wrapping one."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = []
    for path, module in model.named_modules():
        if not path or _PEFT_CHILDREN.intersection(path.split(".")):
            continue
        if isinstance(module, BaseTunerLayer | nn.Linear | nn.Conv2d):
            out.append(path)
    return out


def base_layer(module: nn.Module) -> nn.Module:
    """The wrapped Linear/Conv2d for a peft layer, else the module itself."""
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) else module


def _unet_config(unet: nn.Module) -> Mapping[str, Any] | None:
    return getattr(unet, "config", None)


def module_lookup(unet: nn.Module | None, text_encoders: list[nn.Module], family: Any
                  ) -> dict[str, tuple[int | str, str]]:
    """Lookup table ``{kohya module name: (component, module path)}`` for import and verification.

    component is ``"unet"`` or the text-encoder index. UNet paths appear in both conventions; TE paths under the
    family prefix (plus ``lora_te1``, which some tools write for a lone encoder) in both the ``text_model.`` and the
    bare form.
    """
    table: dict[str, tuple[int | str, str]] = {}
    if unet is not None:
        paths = target_paths(unet)
        for sgm in (False, True):
            for name, path in unet_kohya_names(paths, sgm, _unet_config(unet)).items():
                table[name] = ("unet", path)
    prefixes = te_prefixes(family, len(text_encoders))
    for index, (te, prefix) in enumerate(zip(text_encoders, prefixes, strict=True)):
        aliases = [prefix, "lora_te1"] if len(text_encoders) == 1 and prefix == "lora_te" else [prefix]
        has_tm = hasattr(te, "text_model")
        for path in target_paths(te):
            bare = strip_peft_prefix(path).removeprefix("text_model.")
            for alias in aliases:
                table[kohya_name(alias, te_canonical_path(path, has_tm))] = (index, path)
                table.setdefault(kohya_name(alias, bare), (index, path))
    return table


def canonical_name(component: int | str, path: str, family: Any, model: nn.Module | None = None,
                   num_text_encoders: int = 1) -> str | None:
    """The one name our exporter writes for a module (diffusers/SGM by family, ``text_model.`` TE form).

    ``model`` is the UNet (its config fixes the SGM index arithmetic) or the text encoder the path belongs to.
    """
    if component == "unet":
        names = unet_kohya_names([path], uses_sgm_names(family), _unet_config(model) if model is not None else None)
        return next(iter(names), None)
    prefix = te_prefixes(family, num_text_encoders)[int(component)]
    return kohya_name(prefix, te_canonical_path(path, hasattr(model, "text_model")))
