"""SubsetOptions: how the images of one subset are captioned and augmented each step.

kohya's dataset config lets each ``[[datasets.subsets]]`` set these on its own (a character folder with shuffled
tags beside a style folder with flips); without one, every image shares the options of the run's config. One frozen
value per subset, carried by each of its images, so the dataset never asks which subset an image came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.contract.config import parse_face_crop_range
from training.contract.errors import UserError

if TYPE_CHECKING:
    from training.contract.config import TrainConfig


@dataclass(frozen=True)
class SubsetOptions:
    """kohya's subset options under kohya's names and defaults (see TrainConfig for what each one does)."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    # (min, max) face sizes per crop side; the config's text '2.0,4.0' or a dataset config's list is accepted
    face_crop_aug_range: tuple[float, float] | None = None
    caption_separator: str = ","
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    enable_wildcard: bool = False
    caption_tag_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    token_warmup_min: int = 1
    token_warmup_step: float = 0.0

    def __post_init__(self) -> None:
        try:
            face_range = parse_face_crop_range(self.face_crop_aug_range)
        except ValueError as err:
            raise UserError(f"face_crop_aug_range {self.face_crop_aug_range!r}: {err}") from None
        object.__setattr__(self, "face_crop_aug_range", face_range)  # frozen: the one normalisation

    @property
    def captions_vary(self) -> bool:
        """Whether the same image's caption differs between steps beyond being dropped entirely (an empty caption
        is one more fixed text), so its text-encoder output cannot be computed once."""
        return (self.shuffle_caption or self.caption_tag_dropout_rate > 0 or self.token_warmup_step > 0
                or self.enable_wildcard)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> SubsetOptions:
        """The run-wide options: every field of this class is a TrainConfig field of the same name."""
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})
