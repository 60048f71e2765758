"""peft adapters -> kohya-format LoRA ``.safetensors`` (docs/lora-format.md §1, §2, §5, §6, §8.1).

The output loads with every tensor applied at the right scale in A1111, Forge, ComfyUI and diffusers: kohya names
(diffusers-style UNet names for SD1/SD2, ``text_model_`` TE names), fp16 contiguous tensors and a per-module alpha
equal to peft's ``scaling * r``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.contract.atomic import write_bytes_atomic
from training.contract.errors import UserError
from training.lora_files.names import canonical_name, strip_peft_prefix

NETWORK_MODULE = "networks.lora"
MODELSPEC_VERSION = "1.0.1"
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
HASH_KEY = "sshs_model_hash"


def _lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(strip_peft_prefix(p), m) for p, m in model.named_modules() if isinstance(m, LoraLayer)]


def _active_adapter(layer: Any) -> str:
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if not adapters:
        raise UserError(f"LoRA layer has no active adapter to export (adapters: {list(layer.lora_A)})")
    return adapters[0]


def _module_tensors(layer: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(down, up, alpha) for one peft layer; alpha = scaling * r so that kohya's alpha/r equals peft's scale."""
    adapter = _active_adapter(layer)
    if layer.use_dora.get(adapter, False) or getattr(layer, "lora_bias", {}).get(adapter, False):
        raise UserError("DoRA and lora_bias adapters have no kohya representation; train without them to export")
    down = layer.lora_A[adapter].weight.detach().to("cpu", dtype).contiguous()
    up = layer.lora_B[adapter].weight.detach().to("cpu", dtype).contiguous()
    alpha = torch.tensor(float(layer.scaling[adapter]) * int(layer.r[adapter]), dtype=dtype)
    return down, up, alpha


def kohya_state_dict(unet: nn.Module | None, text_encoders: list[nn.Module], family: Any,
                     dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Flat kohya state dict of every peft LoRA layer (active adapter) in the UNet and the text encoders."""
    components: list[tuple[int | str, nn.Module]] = [] if unet is None else [("unet", unet)]
    components += list(enumerate(text_encoders))
    out: dict[str, torch.Tensor] = {}
    for component, model in components:
        for path, layer in _lora_layers(model):
            name = canonical_name(component, path, family, model, len(text_encoders))
            if name is None:
                raise UserError(f"cannot express the LoRA on {path!r} in kohya naming")
            down, up, alpha = _module_tensors(layer, dtype)
            out[f"{name}.lora_down.weight"] = down
            out[f"{name}.lora_up.weight"] = up
            out[f"{name}.alpha"] = alpha
    if not out:
        raise UserError("no LoRA layers found to export")
    return out


def data_region_hash(serialised: bytes) -> str:
    """SHA-256 of the tensor-data region (the bytes after 8 + header length): kohya's/A1111's sshs_model_hash."""
    (header_len,) = struct.unpack("<Q", serialised[:8])
    return hashlib.sha256(memoryview(serialised)[8 + header_len:]).hexdigest()


def _check_finite(state_dict: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, t in state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"refusing to save a LoRA with NaN/Inf values in {len(bad)} tensor(s), e.g. {bad[:3]}; "
                        "training diverged (lower the learning rate or check the mixed-precision settings)")


def save_lora(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Write ``state_dict`` + ``metadata`` atomically to ``path``; return the sshs_model_hash stored in it.

    The hash covers only the tensor region, so serialise once without it, hash, then serialise with it. The
    file appears under its final name only once complete (temp file in the same folder + os.replace).
    """
    from safetensors.torch import save

    _check_finite(state_dict)
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"metadata values must be strings: {bad[:5]}")
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    meta = {k: v for k, v in metadata.items() if k != HASH_KEY}
    digest = data_region_hash(save(tensors, metadata=meta))
    blob = save(tensors, metadata={**meta, HASH_KEY: digest})
    write_bytes_atomic(Path(path), blob, fsync=True)
    return digest


# --- metadata (§6) -----------------------------------------------------------------------------------------------

# config key -> ss_ key, where kohya's name differs from "ss_" + key.
_RENAMED = {"optimizer_type": "ss_optimizer", "train_batch_size": "ss_batch_size_per_device"}
_DIRECT = (
    "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps", "max_grad_norm",
    "gradient_checkpointing", "gradient_accumulation_steps", "network_dropout", "clip_skip", "max_token_length",
    "mixed_precision", "full_fp16", "seed", "cache_latents", "noise_offset", "multires_noise_iterations",
    "multires_noise_discount", "min_snr_gamma", "zero_terminal_snr", "loss_type", "flip_aug", "color_aug",
    "random_crop", "shuffle_caption", "keep_tokens", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
    "bucket_no_upscale", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "output_name", "max_train_steps", "training_comment", "prior_loss_weight",
)
# training-fact keys stored as JSON (nested structures, §6.1).
_JSON_FACTS = {"tag_frequency", "dataset_dirs", "reg_dataset_dirs", "bucket_info", "datasets"}


def _s(value: Any) -> str:
    """kohya's ``str()``: None -> "None", booleans "True"/"False"; nested structures as JSON."""
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def parse_resolution(value: Any, default: int) -> tuple[int, int]:
    """(width, height) from 512, "512", "512,768", (512, 768) or None."""
    if value is None:
        return default, default
    if isinstance(value, int | float):
        return int(value), int(value)
    parts = [int(float(p)) for p in str(value).strip("()[] ").replace("x", ",").split(",") if p.strip()] \
        if isinstance(value, str) else [int(v) for v in value]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _most_common(values: list[float]) -> float | None:
    return Counter(values).most_common(1)[0][0] if values else None


def _network_facts(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None) -> dict[str, str]:
    """ss_network_*: from the file's most common rank/alpha when given (so they always agree, §10 item 13)."""
    dim = config.get("network_dim") or 4
    alpha = config.get("network_alpha")
    alpha = 1.0 if alpha is None else alpha
    if state_dict:
        ranks = [int(t.shape[0]) for k, t in state_dict.items() if k.endswith(".lora_down.weight")]
        alphas = [float(t) for k, t in state_dict.items() if k.endswith(".alpha")]
        dim, alpha = _most_common(ranks) or dim, _most_common(alphas) or alpha
    out = {"ss_network_module": NETWORK_MODULE, "ss_network_dim": _s(dim), "ss_network_alpha": _s(alpha)}
    if config.get("network_args"):
        out["ss_network_args"] = json.dumps({k: str(v) for k, v in dict(config["network_args"]).items()})
    return out


def _modelspec(config: Mapping[str, Any], family: Any, training: Mapping[str, Any], res: tuple[int, int]
               ) -> dict[str, str]:
    from training.lora_files.names import uses_sgm_names

    finished = training.get("training_finished_at")
    when = dt.datetime.fromtimestamp(float(finished)) if finished is not None else dt.datetime.now()
    title = training.get("title") or config.get("title") or config.get("output_name") or f"LoRA@{int(time.time())}"
    spec = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{family.modelspec_architecture}/lora",
        "modelspec.implementation": SGM_IMPLEMENTATION if uses_sgm_names(family) else "diffusers",
        "modelspec.implementation_version": f"loraforge/{_version()}",
        "modelspec.title": str(title),
        "modelspec.resolution": f"{res[0]}x{res[1]}",
        "modelspec.date": when.replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if family.v_parameterization else "epsilon",
    }
    if config.get("clip_skip") is not None:
        spec["modelspec.encoder_layer"] = str(config["clip_skip"])
    for key in ("author", "description", "license", "tags", "trigger_phrase", "usage_hint"):
        if config.get(key):
            spec[f"modelspec.{key}"] = _s(config[key])
    return spec


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loraforge")
    except PackageNotFoundError:
        return "0.1.0"


def build_metadata(config: Mapping[str, Any], family: Any, training: Mapping[str, Any], *,
                   state_dict: Mapping[str, torch.Tensor] | None = None) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` metadata of §6, every value a string.

    ``config``: flat resolved config with kohya key names. ``training``: run facts (session_id,
    training_started_at/finished_at, num_train_images, num_reg_images, num_batches_per_epoch, num_epochs, epoch,
    steps, tag_frequency, dataset_dirs, reg_dataset_dirs, bucket_info, sd_model_hash, new_sd_model_hash, ...);
    each becomes ``ss_<key>`` (JSON for nested ones). ``state_dict`` pins ss_network_dim/alpha to the file.
    """
    res = parse_resolution(config.get("resolution"), family.default_resolution)
    meta = {f"ss_{k}": _s(config.get(k)) for k in _DIRECT if k in config}
    meta.update({v: _s(config.get(k)) for k, v in _RENAMED.items() if k in config})
    meta["ss_resolution"] = str(res)
    if "train_batch_size" in config:
        total = int(config["train_batch_size"]) * int(config.get("gradient_accumulation_steps") or 1)
        meta["ss_total_batch_size"] = str(total)
    model = config.get("pretrained_model_name_or_path")
    if model:
        meta["ss_sd_model_name"] = os.path.basename(str(model).rstrip("/\\")) or str(model)
    for key, value in training.items():
        if key != "title":
            meta[f"ss_{key}"] = json.dumps(value) if key in _JSON_FACTS else _s(value)
    meta.setdefault("ss_session_id", str(int.from_bytes(os.urandom(4), "big")))
    meta.update(_network_facts(config, state_dict))
    meta["ss_v2"] = str(bool(family.v2))
    meta["ss_base_model_version"] = family.base_model_version
    meta.update(_modelspec(config, family, training, res))
    meta["loraforge_config"] = json.dumps(dict(config), default=str, sort_keys=True)
    return meta
