"""How long a run is and which images it holds out: torch-free, so the dataset check shows the same plan as the run."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from training.contract.config import TrainConfig
from training.data.folder import ImageItem


@dataclass
class Plan:
    """How long the run is; derived once so the loop, events and metadata agree."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    total_epochs: int


def split_validation(cfg: TrainConfig, items: list[ImageItem]) -> tuple[list[ImageItem], list[ImageItem], str]:
    """Hold out images for the validation loss, or fall back to a fixed training subset on tiny datasets."""
    if cfg.validation_every_n_steps == 0:
        return items, [], "off"
    held = round(len(items) * cfg.validation_split)
    if held >= 1 and len(items) - held >= 1:
        rng = random.Random(cfg.seed)
        chosen = set(rng.sample(range(len(items)), held))
        train = [it for i, it in enumerate(items) if i not in chosen]
        return train, [items[i] for i in sorted(chosen)], "held-out"
    return items, items[:4], "train-subset"


def plan_run(cfg: TrainConfig, batches_per_epoch: int, num_processes: int) -> Plan:
    per_process = math.ceil(batches_per_epoch / num_processes)
    steps_per_epoch = max(1, math.ceil(per_process / cfg.gradient_accumulation_steps))
    total = cfg.max_train_epochs * steps_per_epoch if cfg.max_train_epochs else cfg.max_train_steps
    return Plan(batches_per_epoch, steps_per_epoch, total, math.ceil(total / steps_per_epoch))
