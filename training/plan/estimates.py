"""What a config will produce, before anything loads: the LoRA file's size and the run's length in steps.

Torch-free, so the UI can show the figures beside a preset. The size runs the engine's own module selection
(``training.networks.targets.select_targets``) on the module tables of the bundled configs
(``assets/models/<family>/modules.json``: every Linear and Conv2d with its shape and enclosing classes) and counts
what the network type stores per selected module (``training.networks.sizes``) in the save precision, plus one
header entry per tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from training.contract.config import TrainConfig
from training.models.families import FAMILIES
from training.networks.sizes import ModuleSize, module_size
from training.networks.targets import Ranks, read_module_table, trained_targets
from training.plan.schedule import Schedule

BYTES_PER_VALUE = {"fp16": 2, "bf16": 2, "float": 4}
# A safetensors header entry per tensor: its kohya name (about 70 characters for the UNet's; LoHa's and LoKr's
# suffixes are shorter than lora_down.weight) with dtype, shape and offsets in JSON. An estimate, as is the metadata
# block (the ss_* keys, the dataset's tag counts).
HEADER_BYTES_PER_TENSOR = 125
METADATA_BYTES = 2_000


@dataclass(frozen=True)
class LoraSize:
    """A LoRA file's size: the tensors' values and bytes, the header estimated."""

    modules: int
    values: int  # every stored value but the alphas (those are counted in data_bytes)
    data_bytes: int  # the tensors as stored
    bytes: int  # data, plus the estimated header
    conv_modules: int = 0  # 3x3 convs, trained at conv_dim (LoCon and LyCORIS's full preset)
    linear_modules: int = 0  # Linears and 1x1 convs, trained at network_dim
    tensors: int = 0

    @classmethod
    def of(cls, modules: list[ModuleSize], save_precision: str = "fp16") -> LoraSize:
        values = sum(m.values for m in modules)
        data = (values + len(modules)) * BYTES_PER_VALUE[save_precision]  # one alpha scalar per module
        tensors = sum(m.tensors for m in modules)
        header = 8 + METADATA_BYTES + HEADER_BYTES_PER_TENSOR * tensors
        conv = sum(m.conv for m in modules)
        return cls(len(modules), values, data, data + header, conv, len(modules) - conv, tensors)

    @property
    def megabytes(self) -> float:
        return self.bytes / 1e6


def text_encoder_folders(family: str) -> list[Path]:
    """The family's text encoder config folders, in kohya's order (text_encoder, then SDXL's text_encoder_2)."""
    root = FAMILIES[family].config_dir
    return [root / name for name in ("text_encoder", "text_encoder_2") if (root / name).is_dir()]


def lora_size(cfg: TrainConfig, family: str) -> LoraSize:
    """The size of the LoRA file ``cfg`` saves for a base model of ``family`` (sd1, sd2, sd2-v, sdxl): the UNet always,
    each text encoder the config trains; the modules ``cfg.network`` selects, as the trainer selects them."""
    spec = cfg.network
    ranks = Ranks.of(spec, cfg.network_dim, cfg.network_alpha, FAMILIES[family].unet_sgm_names)
    table = read_module_table(FAMILIES[family].config_dir)
    parts = [("unet", table["unet"])]
    encoders = [name for name in ("text_encoder", "text_encoder_2") if name in table]
    parts += [("text_encoder", table[encoders[i]]) for i in cfg.trained_text_encoders(len(encoders))]
    modules = [module_size(t, spec, ranks, part) for part, infos in parts
               for t, _, _ in trained_targets(spec, infos, part, ranks)]
    return LoraSize.of(modules, cfg.save_precision)


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
