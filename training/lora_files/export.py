"""peft adapters -> kohya/LyCORIS-format LoRA ``.safetensors``, with the metadata kohya tools and the WebUIs read.

Every module is written in its type's layout (``layout_lora``, ``layout_loha``, ``layout_lokr``) under kohya's name
(diffusers-style UNet names for SD1/SD2, SGM names for SDXL, ``text_model_`` TE names), as contiguous tensors whose
alpha gives every loader peft's scale. The metadata names the module that wrote the file (networks.lora or
lycoris.kohya) and its network_args, as kohya and LyCORIS do.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.contract.atomic import write_bytes_atomic
from training.contract.disk_space import ensure_space, no_space, ran_out_of_space
from training.contract.errors import UserError
from training.contract.network import KOHYA_LORA, NetworkArgsError, NetworkSpec, parse_network, split_args
from training.lora_files.kinds import adapter_layers, layout_for_parts
from training.lora_files.names import canonical_name, strip_peft_prefix

MODELSPEC_VERSION = "1.0.1"
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
HASH_KEY = "sshs_model_hash"


def kohya_state_dict(unet: nn.Module | None, text_encoders: list[nn.Module], family: Any,
                     dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Flat kohya/LyCORIS state dict of every peft adapter layer (LoRA/LoCon/DoRA, LoHa, LoKr) in the UNet and the
    text encoders: ``<kohya name>.<part>`` per tensor, in each type's layout (``layout_*``)."""
    components: list[tuple[int | str, nn.Module]] = [] if unet is None else [("unet", unet)]
    components += list(enumerate(text_encoders))
    out: dict[str, torch.Tensor] = {}
    for component, model in components:
        for path, layer, layout in adapter_layers(model):
            name = canonical_name(component, strip_peft_prefix(path), family, model, len(text_encoders))
            if name is None:
                raise UserError(f"cannot express the adapter on {path!r} in kohya naming")
            out.update({f"{name}.{part}": tensor for part, tensor in layout.export(layer, dtype).items()})
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
    write_lora_bytes(Path(path), blob)
    return digest


def write_lora_bytes(path: Path, blob: bytes) -> None:
    """The file's bytes, written atomically, after checking they fit; a full disk is one line naming the file (the
    temp file is removed either way, so the disk is not left full)."""
    what = f"the LoRA {path.name}"
    ensure_space(path.parent, what, len(blob))
    try:
        write_bytes_atomic(path, blob, fsync=True)
    except OSError as err:
        if ran_out_of_space(err, path.parent, len(blob)):
            raise no_space(path.parent, what, len(blob)) from None
        raise


# --- metadata: the ss_* keys kohya's tools and the WebUIs read, and the modelspec.* keys --------------------------

# config key -> ss_ name (without the prefix), where kohya's name differs from the config key.
_RENAMED = {"optimizer_type": "optimizer", "train_batch_size": "batch_size_per_device",
            "debiased_estimation_loss": "debiased_estimation"}
_DIRECT = (
    "learning_rate", "unet_lr", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps", "max_grad_norm",
    "gradient_checkpointing", "gradient_accumulation_steps", "network_dropout", "clip_skip", "max_token_length",
    "mixed_precision", "full_fp16", "seed", "cache_latents", "noise_offset", "multires_noise_iterations",
    "multires_noise_discount", "min_snr_gamma", "zero_terminal_snr", "loss_type", "flip_aug", "color_aug",
    "random_crop", "shuffle_caption", "keep_tokens", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
    "bucket_no_upscale", "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
    "output_name", "max_train_steps", "training_comment", "prior_loss_weight", "scale_weight_norms",
    "adaptive_noise_scale", "noise_offset_random_strength", "ip_noise_gamma", "ip_noise_gamma_random_strength",
    "huber_schedule", "huber_scale", "huber_c",
    "face_crop_aug_range",
)
# training facts stored as JSON whatever their value (kohya's readers JSON-parse them).
_JSON_FACTS = {"tag_frequency", "dataset_dirs", "reg_dataset_dirs", "bucket_info", "datasets"}
# ss_ names stated by the file itself (NetworkFacts) and its family: never taken from the config or run facts.
_FILE_FACTS = {"network_module", "network_dim", "network_alpha", "network_args", "v2", "base_model_version"}
# modelspec.<key> from the config's metadata_<key> (kohya's option names), or a plain <key> a tool's config gives
_MODELSPEC_FROM_CONFIG = ("author", "description", "license", "tags", "trigger_phrase", "usage_hint")
# What no_metadata keeps, as kohya does: the keys loaders filter and scale by (the network facts and family
# markers), the modelspec block and the hash; nothing about the dataset or the training.
_MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                 "ss_network_args")


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


def network_spec(config: Mapping[str, Any]) -> NetworkSpec:
    """The config's network (network_module, network_args, conv_dim/conv_alpha), parsed by the contract."""
    args = config.get("network_args")
    if isinstance(args, Mapping):  # an already split {key: value} form
        args = [f"{k}={v}" for k, v in args.items()]
    alpha = config.get("network_alpha")
    try:
        return parse_network(config.get("network_module") or "networks.lora", split_args(args),
                             int(config.get("network_dim") or 4), 1.0 if alpha is None else float(alpha),
                             config.get("conv_dim"), config.get("conv_alpha"))
    except NetworkArgsError as err:
        raise UserError(str(err)) from None


def file_ranks(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[int], list[float]]:
    """Each module's rank and alpha, for the modules whose loaders divide alpha by a rank."""
    ranks, alphas = [], []
    for parts in group_parts(state_dict).values():
        layout = layout_for_parts(parts)
        rank = None if layout is None or layout.missing(parts) else layout.rank(parts)
        if rank is not None:
            ranks.append(rank)
            alphas.append(float(parts["alpha"]))
    return ranks, alphas


def group_parts(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {part: tensor}}`` from flat ``<name>.<part>`` keys."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        name, _, part = key.partition(".")
        grouped.setdefault(name, {})[part] = tensor
    return grouped


def _conv_args(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """conv_dim/conv_alpha as networks.lora states a LoCon: the most common rank and alpha of the 3x3 convs."""
    ranks, alphas = [], []
    for parts in group_parts(state_dict).values():
        down = parts.get("lora_down.weight")
        if down is not None and down.ndim == 4 and tuple(down.shape[2:]) != (1, 1):
            ranks.append(int(down.shape[0]))
            alphas.append(float(parts["alpha"]) if "alpha" in parts else float(down.shape[0]))
    if not ranks:
        return {}
    return {"conv_dim": str(_most_common(ranks)), "conv_alpha": f"{_most_common(alphas):g}"}


@dataclass(frozen=True)
class NetworkFacts:
    """ss_network_*: the module (networks.lora or lycoris.kohya) and its args as kohya/LyCORIS write them (a JSON
    object of strings, e.g. {"algo": "loha", "conv_dim": "8"}); dim and alpha are the file's most common rank and
    alpha when its tensors are given, so that the metadata always agrees with the file, the config's otherwise (and
    with block_dims/block_alphas, where sd-scripts writes network_dim/network_alpha whatever the blocks say)."""

    module: str
    dim: float
    alpha: float
    args: dict[str, str] | None  # network_args, every value a string as kohya writes them

    @classmethod
    def of(cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None) -> NetworkFacts:
        spec = network_spec(config)
        dim = config.get("network_dim") or 4
        alpha = 1.0 if config.get("network_alpha") is None else config["network_alpha"]
        if state_dict:  # per-block values: networks.lora writes network_dim/network_alpha as they are
            ranks, alphas = file_ranks(state_dict)
            dim = dim if spec.block_dims else _most_common(ranks) or dim
            alpha = alpha if spec.block_alphas else _most_common(alphas) or alpha
        args = dict(arg.split("=", 1) for arg in spec.args())
        if state_dict and spec.module == KOHYA_LORA and not ({"conv_dim", "conv_block_dims"} & set(args)):
            args |= _conv_args(state_dict)  # dim_from_weights: a LoCon file's convs came from the file, not the args
        return cls(spec.module, dim, alpha, args or None)

    def render(self) -> dict[str, str]:
        out = {"ss_network_module": self.module, "ss_network_dim": _s(self.dim), "ss_network_alpha": _s(self.alpha)}
        if self.args is not None:
            out["ss_network_args"] = json.dumps(self.args)
        return out


@dataclass(frozen=True)
class LoraMetadata:
    """Every fact an exported LoRA states about itself and its training, gathered once by ``build``; ``render``
    writes each header key exactly once.

    ``config`` is the flat resolved config with kohya key names. ``facts`` are the run's facts
    (``training.run.checkpoints.training_facts``: dataset, progress, times, the rates and batch size the run really
    used), each stored as ``ss_<name>``; where the run measured a value the config also states (mixed_precision,
    unet_lr, text_encoder_lr, max_train_steps, total_batch_size), the run's value is the one written."""

    config: Mapping[str, Any]
    family: Any
    facts: Mapping[str, Any]  # run facts plus the session id, without the title
    network: NetworkFacts
    resolution: tuple[int, int]
    title: str
    date: dt.datetime  # when training finished (modelspec.date)

    @classmethod
    def build(cls, config: Mapping[str, Any], family: Any, training: Mapping[str, Any],
              state_dict: Mapping[str, torch.Tensor] | None = None) -> LoraMetadata:
        facts = {k: v for k, v in training.items() if k != "title"}
        facts.setdefault("session_id", int.from_bytes(os.urandom(4), "big"))  # a random one when the run gave none
        finished = training.get("training_finished_at")
        title = (training.get("title") or config.get("metadata_title") or config.get("title")
                 or config.get("output_name") or f"LoRA@{int(time.time())}")
        return cls(config, family, facts, NetworkFacts.of(config, state_dict),
                   parse_resolution(config.get("resolution"), family.default_resolution), str(title),
                   dt.datetime.fromtimestamp(float(finished)) if finished is not None else dt.datetime.now())

    def config_values(self) -> dict[str, Any]:
        """ss_ name -> value as the config states it (plus what follows from it: batch total, model file name)."""
        cfg = self.config
        values = {k: cfg[k] for k in _DIRECT if k in cfg} | {name: cfg[k] for k, name in _RENAMED.items() if k in cfg}
        if cfg.get("optimizer_args") and "optimizer" in values:  # kohya's form: the name, then (key=value,...)
            values["optimizer"] = f"{values['optimizer']}({','.join(cfg['optimizer_args'])})"
        values["resolution"] = self.resolution
        if "train_batch_size" in cfg:
            values["total_batch_size"] = int(cfg["train_batch_size"]) * int(cfg.get("gradient_accumulation_steps") or 1)
        model = cfg.get("pretrained_model_name_or_path")
        if model:
            values["sd_model_name"] = os.path.basename(str(model).rstrip("/\\")) or str(model)
        return values

    def training_entries(self) -> dict[str, str]:
        """The ss_ keys from the config and the run facts, each decided once: the run's value where it has one."""
        from_config = self.config_values()
        names = [n for n in (*from_config, *(n for n in self.facts if n not in from_config)) if n not in _FILE_FACTS]
        return {f"ss_{n}": self._fact_text(n) if n in self.facts else _s(from_config[n]) for n in names}

    def _fact_text(self, name: str) -> str:
        value = self.facts[name]
        return json.dumps(value) if name in _JSON_FACTS else _s(value)

    def modelspec(self) -> dict[str, str]:
        from training.lora_files.names import uses_sgm_names

        fam, cfg = self.family, self.config
        spec = {
            "modelspec.sai_model_spec": MODELSPEC_VERSION,
            "modelspec.architecture": f"{fam.modelspec_architecture}/lora",
            "modelspec.implementation": SGM_IMPLEMENTATION if uses_sgm_names(fam) else "diffusers",
            "modelspec.implementation_version": f"loraforge/{_version()}",
            "modelspec.title": self.title,
            "modelspec.resolution": f"{self.resolution[0]}x{self.resolution[1]}",
            "modelspec.date": self.date.replace(microsecond=0).isoformat(),
            "modelspec.prediction_type": "v" if fam.v_parameterization else "epsilon",
        }
        if cfg.get("clip_skip") is not None:
            spec["modelspec.encoder_layer"] = str(cfg["clip_skip"])
        if cfg.get("min_timestep") is not None or cfg.get("max_timestep") is not None:
            low, high = cfg.get("min_timestep"), cfg.get("max_timestep")  # sd-scripts' defaults: 0 and 1000
            spec["modelspec.timestep_range"] = f"{0 if low is None else low},{1000 if high is None else high}"
        for key in _MODELSPEC_FROM_CONFIG:
            value = cfg.get(f"metadata_{key}") or cfg.get(key)
            if value:
                spec[f"modelspec.{key}"] = _s(value)
        return spec

    def render(self) -> dict[str, str]:
        """The header metadata, every value a string; the groups share no key."""
        family_markers = {"ss_v2": str(bool(self.family.v2)), "ss_base_model_version": self.family.base_model_version}
        if self.config.get("no_metadata"):
            minimum = {**self.network.render(), **family_markers}
            return {**{k: minimum[k] for k in _MINIMUM_KEYS if k in minimum}, **self.modelspec()}
        return {**self.training_entries(), **self.network.render(), **family_markers, **self.modelspec(),
                "loraforge_config": json.dumps(dict(self.config), default=str, sort_keys=True)}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loraforge")
    except PackageNotFoundError:
        return "0.1.0"


def build_metadata(config: Mapping[str, Any], family: Any, training: Mapping[str, Any], *,
                   state_dict: Mapping[str, torch.Tensor] | None = None) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` metadata of an exported LoRA (see LoraMetadata), every value a string.

    ``state_dict`` pins ss_network_dim/alpha to the file."""
    return LoraMetadata.build(config, family, training, state_dict).render()
