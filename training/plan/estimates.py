"""What a config will produce, before anything loads: the LoRA file's size and the run's length in steps.

Torch-free, so the UI can show the figures beside a preset. The size counts the modules ``training.networks.lora``
targets (the attention projections) in the base model's shapes, read from the bundled config folders of
``assets/models`` rather than from the weights: each module stores down (rank x in), up (out x rank) and a scalar
alpha in the save precision, plus one header entry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.config import TrainConfig
from training.models.families import FAMILIES
from training.networks.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS
from training.plan.schedule import Schedule

BYTES_PER_VALUE = {"fp16": 2, "bf16": 2, "float": 4}
TENSORS_PER_MODULE = 3  # lora_down, lora_up, alpha
# A safetensors header entry per tensor: its kohya name (about 70 characters for the UNet's) with dtype, shape and
# offsets in JSON. An estimate, as is the metadata block (the ss_* keys, the dataset's tag counts).
HEADER_BYTES_PER_TENSOR = 135
METADATA_BYTES = 2_000

Projection = tuple[int, int]  # (in_features, out_features) of one targeted Linear layer


def _per_block(value: Any, blocks: int) -> list[Any]:
    """A UNet config value given once for every block, or per block."""
    return list(value) if isinstance(value, list | tuple) else [value] * blocks


def _transformer_block(width: int, context: int) -> list[Projection]:
    """One transformer block: self-attention (q, k, v, out: width -> width), then cross-attention whose k and v read
    the text context."""
    self_attention = [(width, width)] * len(UNET_TARGETS)
    cross_attention = [(width, width), (context, width), (context, width), (width, width)]
    return self_attention + cross_attention


def unet_projections(config: dict[str, Any]) -> list[Projection]:
    """The targeted projections of a ``UNet2DConditionModel`` config: every transformer block of the cross-attention
    down blocks (layers_per_block attentions each), the middle block and the up blocks (one attention more)."""
    widths = list(config["block_out_channels"])
    levels = len(widths)
    depth = _per_block(config.get("transformer_layers_per_block") or 1, levels)
    up_depth = _per_block(config.get("reverse_transformer_layers_per_block") or list(reversed(depth)), levels)
    context = _per_block(config["cross_attention_dim"], levels)
    layers = _per_block(config["layers_per_block"], levels)
    blocks: list[tuple[int, int]] = []  # (width, context) per transformer block
    for i, kind in enumerate(config["down_block_types"]):
        if "CrossAttn" in kind:
            blocks += [(widths[i], context[i])] * (layers[i] * depth[i])
    if (config.get("mid_block_type") or "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        blocks += [(widths[-1], context[-1])] * depth[-1]
    up_widths, up_layers, up_context = widths[::-1], layers[::-1], context[::-1]
    for i, kind in enumerate(config["up_block_types"]):
        if "CrossAttn" in kind:
            blocks += [(up_widths[i], up_context[i])] * ((up_layers[i] + 1) * up_depth[i])
    return [p for width, ctx in blocks for p in _transformer_block(width, ctx)]


def text_encoder_projections(config: dict[str, Any]) -> list[Projection]:
    """The targeted projections of a CLIP text encoder config: q, k, v and out of every layer, hidden -> hidden."""
    hidden = config["hidden_size"]
    return [(hidden, hidden)] * (len(TEXT_ENCODER_TARGETS) * config["num_hidden_layers"])


@dataclass(frozen=True)
class LoraSize:
    """A LoRA file's size: the tensors' values and bytes, the header estimated."""

    modules: int
    values: int  # lora_down and lora_up values together (the alphas are counted in data_bytes)
    data_bytes: int  # the tensors as stored
    bytes: int  # data, plus the estimated header

    @classmethod
    def of(cls, projections: list[Projection], rank: int, save_precision: str = "fp16") -> LoraSize:
        values = sum(rank * (n_in + n_out) for n_in, n_out in projections)
        data = (values + len(projections)) * BYTES_PER_VALUE[save_precision]
        header = 8 + METADATA_BYTES + HEADER_BYTES_PER_TENSOR * TENSORS_PER_MODULE * len(projections)
        return cls(len(projections), values, data, data + header)

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6


def _read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def text_encoder_folders(family: str) -> list[Path]:
    """The family's text encoder config folders, in kohya's order (text_encoder, then SDXL's text_encoder_2)."""
    root = FAMILIES[family].config_dir
    return [root / name for name in ("text_encoder", "text_encoder_2") if (root / name).is_dir()]


def lora_size(cfg: TrainConfig, family: str) -> LoraSize:
    """The size of the LoRA file ``cfg`` saves for a base model of ``family`` (sd1, sd2, sd2-v, sdxl): the UNet always,
    each text encoder the config trains."""
    projections = unet_projections(_read_config(FAMILIES[family].config_dir / "unet"))
    encoders = text_encoder_folders(family)
    for index in cfg.trained_text_encoders(len(encoders)):
        projections += text_encoder_projections(_read_config(encoders[index]))
    return LoraSize.of(projections, cfg.network_dim, cfg.save_precision)


def trained_parts(cfg: TrainConfig, family: str) -> str:
    """What the LoRA covers, in words: "UNet + text encoder", "UNet only", "UNet + both text encoders"."""
    count = len(text_encoder_folders(family))
    trained = cfg.trained_text_encoders(count)
    if not trained:
        return "UNet only"
    if len(trained) == 1:
        return "UNet + text encoder" + (f" {trained[0] + 1}" if count > 1 else "")
    return "UNet + both text encoders"


def total_steps(cfg: TrainConfig, images_times_repeats: int) -> int:
    """The run's optimizer steps for a dataset of ``images_times_repeats`` per epoch in one bucket, on one GPU:
    images x repeats / batch (rounded up) / gradient accumulation x epochs, or max_train_steps without epochs."""
    batches = math.ceil(images_times_repeats / cfg.train_batch_size)
    return Schedule.build(cfg, batches).total_steps
