"""The objects a run is made of, grouped by lifetime: what one step reads (``StepParts``), what feeds the steps
(``TrainData``), what the run reports (``RunFacts``), and the ``Trainer`` that holds them with the frozen base
model. ``training.run.prepare`` builds them; the loop, checkpoints and the benchmark read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from training.contract.config import TrainConfig
from training.data.dataset import TrainDataset
from training.data.folder import DatasetScan
from training.data.latents import LatentCache
from training.data.sampler import BucketBatchSampler
from training.models.conditioning import TextEmbeds
from training.models.families import Family
from training.models.loading import BaseModel
from training.plan.schedule import Schedule
from training.run.loss import LossOptions, NoiseOptions
from training.run.validation import ValidationSet


@dataclass(frozen=True)
class StepSettings:
    """The config values one step reads."""

    noise_offset: float
    min_snr_gamma: float | None
    max_grad_norm: float
    clip_skip: int
    noise: NoiseOptions = field(default_factory=NoiseOptions)  # how noise and timesteps are drawn
    loss: LossOptions = field(default_factory=LossOptions)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> StepSettings:
        return cls(cfg.noise_offset, cfg.min_snr_gamma, cfg.max_grad_norm, cfg.clip_skip,
                   NoiseOptions.from_config(cfg), LossOptions.from_config(cfg))


@dataclass
class StepParts:
    """What ``training.run.loop.train_step`` needs, and nothing else: built by ``build_step_parts`` for training
    and for ``training.bench`` alike, so the benchmark times the very step that trains."""

    accelerator: Accelerator
    unet: torch.nn.Module  # as accelerate wrapped it (and torch.compile, when asked)
    text_encoders: list[torch.nn.Module]  # every encoder of the model (trained ones as accelerate wrapped them)
    trained_models: list[torch.nn.Module]  # the UNet and the trained encoders: what gradient accumulation tracks
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    noise_scheduler: Any
    tokenizers: list[Any]
    vae: Any | None  # None when every batch brings its latents (the benchmark)
    text_cache: dict[str, TextEmbeds] | None
    weight_dtype: torch.dtype
    generator: torch.Generator  # noise and timesteps; saved with the state so a resumed run draws the same
    settings: StepSettings


@dataclass
class TrainData:
    """What feeds the steps and the validation loss."""

    dataset: TrainDataset
    sampler: BucketBatchSampler
    dataloader: Any
    latent_cache: LatentCache | None
    validation: ValidationSet | None


@dataclass(frozen=True)
class RunFacts:
    """What the start event and every LoRA file's metadata report about the run."""

    scan: DatasetScan
    bucket_counts: dict[tuple[int, int], int]
    schedule: Schedule
    family: Family
    group_names: list[str]  # optimizer parameter groups in order: "unet", "text_encoder", "text_encoder_2"


@dataclass
class Trainer:
    """One run's parts, grouped by what uses them: the step, the data, the reported facts; ``base`` is the frozen
    model that sampling, validation and saving read."""

    cfg: TrainConfig
    run_dir: Path
    base: BaseModel
    parts: StepParts
    data: TrainData
    facts: RunFacts

    @property
    def trained_encoders(self) -> list[int]:
        return self.cfg.trained_text_encoders(len(self.base.text_encoders))
