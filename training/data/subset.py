"""SubsetOptions: how the images of one subset are captioned and augmented each step.

kohya's dataset config lets each ``[[datasets.subsets]]`` set these on its own (a character folder with shuffled
tags beside a style folder with flips); without one, every image shares the options of the run's config. One frozen
value per subset, carried by each of its images, so the dataset never asks which subset an image came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.contract.config import TrainConfig


@dataclass(frozen=True)
class SubsetOptions:
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    flip_aug: bool = False

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> SubsetOptions:
        """The run-wide options: every field of this class is a TrainConfig field of the same name."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})
