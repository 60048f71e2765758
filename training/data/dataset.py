"""The training dataset: one index per (image, repeat), a bucket per index, seeded caption and image augmentation.

Randomness is seeded per ``(seed, epoch, index)``, never from a global RNG, so the sample at a given step is the same
on resume and does not depend on DataLoader worker count or order.
Call ``set_epoch`` on the dataset (and on the ``BucketBatchSampler``) before iterating each epoch. Worker processes
get a copy of the dataset when the DataLoader starts iterating, so do not use ``persistent_workers=True``: the
workers would keep the first epoch's number and repeat its augmentations.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from training.contract.config import pixel_augmentations, uncacheable_message
from training.contract.errors import UserError
from training.data.buckets import Bucket, assign_buckets
from training.data.captions import CaptionTime, fixed_caption, process_caption
from training.data.folder import DatasetScan, ImageItem, balance_reg
from training.data.images import (
    apply_color_change,
    crop_around_face,
    crop_geometry,
    draw_color_change,
    face_from_name,
    fit_to_bucket,
    load_image,
    to_tensor,
)
from training.data.latents import Job, LatentCache
from training.data.masks import MaskSource
from training.data.subset import SubsetOptions

DEFAULT_OPTIONS = SubsetOptions()


@dataclass
class StepClock:
    """Which optimizer step a sample trains at, from the epoch's batch order alone (so resume gives the same step):
    the sampler's deterministic batches of an epoch, the steps per epoch, the batches one step takes over all
    processes (gradient accumulation x processes) and the run's total steps."""

    batches: Callable[[int], list[list[int]]]
    steps_per_epoch: int
    batches_per_step: int
    total_steps: int
    _positions: dict[int, int] = field(default_factory=dict, repr=False)
    _positions_epoch: int | None = field(default=None, repr=False)

    def step_of(self, epoch: int, index: int) -> int:
        """Optimizer steps done before the batch holding ``index`` trains in ``epoch`` (0-based)."""
        if self._positions_epoch != epoch:
            self._positions = {i: pos for pos, batch in enumerate(self.batches(epoch)) for i in batch}
            self._positions_epoch = epoch
        within = self._positions.get(index, 0) // self.batches_per_step
        return epoch * self.steps_per_epoch + min(within, self.steps_per_epoch - 1)


class TrainDataset(Dataset):
    def __init__(
        self,
        scan: DatasetScan,
        *,
        resolution: int | tuple[int, int] = 512,
        enable_bucket: bool = True,
        min_reso: int = 256,
        max_reso: int = 1024,
        step: int = 64,
        options: SubsetOptions = DEFAULT_OPTIONS,
        seed: int = 0,
        prior_loss_weight: float = 1.0,
    ) -> None:
        # The regularisation images an epoch holds come after the training images, their repeats balanced against
        # the training images (kohya's DreamBooth rule); both kinds share the buckets, so batches mix them.
        self.items = list(scan.items) + balance_reg(scan.items, scan.reg_items)
        self.item_buckets = assign_buckets(
            [it.size for it in self.items],
            resolution=resolution,
            enable_bucket=enable_bucket,
            min_reso=min_reso,
            max_reso=max_reso,
            step=step,
        )
        # Repeats are expanded into the index list (kohya does the same), so an epoch visits each image `repeats` times.
        self.index = [i for i, it in enumerate(self.items) for _ in range(it.repeats)]
        self.buckets: list[Bucket] = [self.item_buckets[i] for i in self.index]
        self.datasets: list[int] = [self.items[i].dataset for i in self.index]  # for the sampler: one per batch
        self.options = options
        self.enable_bucket = enable_bucket  # kohya's face crop acts only without buckets
        self.seed = seed
        self.prior_loss_weight = prior_loss_weight
        self.epoch = 0
        self.clock: StepClock | None = None
        self._latents: dict[tuple[int, bool], torch.Tensor] | None = None
        self.masks: MaskSource | None = None  # loss masks (masked_loss, alpha_mask): set by the run when used

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def bucket_counts(self) -> dict[Bucket, int]:
        """Distinct images per bucket (for ``bucket_table``)."""
        return dict(Counter(self.item_buckets))

    def latent_jobs(self) -> list[Job]:
        """Every ``(path, bucket, flip)`` training can ask for: both orientations when ``flip_aug`` is on, because a
        VAE is not flip-equivariant, so flipping a cached latent is not the latent of the flipped image (kohya also
        caches the flipped latent separately)."""
        self.check_latents_cacheable()
        return [(it.path, b, f) for it, b in zip(self.items, self.item_buckets, strict=True)
                for f in self.flips(it)]

    def check_latents_cacheable(self) -> None:
        """A subset (kohya's dataset config) whose pixel options change its images each step cannot train from
        latents encoded once: refused in one line, as the run-wide settings are by the config check."""
        for options in {self.options_of(it) for it in self.items}:
            if changing := pixel_augmentations(options, self.enable_bucket):
                raise UserError(uncacheable_message(changing, " in a subset of the dataset config"))

    def attach_latents(self, cache: LatentCache, device: torch.device | str = "cpu") -> None:
        """Serve latents from ``cache`` instead of pixels; run ``cache.encode_all(self.latent_jobs())`` first.

        The tensors are copied into the dataset so that it never holds the VAE (cheap to send to DataLoader workers).
        """
        table: dict[tuple[int, bool], torch.Tensor] = {}
        for item_idx, (item, bucket) in enumerate(zip(self.items, self.item_buckets, strict=True)):
            for flip in self.flips(item):
                latent = cache.get(item.path, bucket, flip)
                if latent is None:
                    raise RuntimeError(f"no cached latent for {item.path} ({bucket}, flip={flip}): run encode_all")
                # On the training device: a per-step copy from pageable host memory would make the GPU wait.
                table[(item_idx, flip)] = latent.to(device)
        self._latents = table

    def options_of(self, item: ImageItem) -> SubsetOptions:
        """The item's own subset options (kohya's dataset config), else the run's."""
        return item.options or self.options

    def flips(self, item: ImageItem) -> tuple[bool, ...]:
        return (False, True) if self.options_of(item).flip_aug else (False,)

    def set_clock(self, clock: StepClock) -> None:
        """Tell the dataset how batches map to optimizer steps (token warm-up needs the step a caption trains at)."""
        self.clock = clock

    def caption_time(self, index: int) -> CaptionTime:
        if self.clock is None:
            return CaptionTime(epoch=self.epoch + 1)
        return CaptionTime(self.epoch + 1, self.clock.step_of(self.epoch, index), self.clock.total_steps)

    def fixed_captions(self) -> set[str] | None:
        """Every caption training can use, when no image's caption varies between steps (else None): the texts
        whose encoder outputs can be computed once. "" is among them (caption dropout)."""
        if any(self.options_of(it).captions_vary for it in self.items):
            return None
        return {fixed_caption(it.caption, self.options_of(it)) for it in self.items} | {""}

    def with_fixed_captions(self, items: Sequence[ImageItem]) -> list[ImageItem]:
        """``items`` (the validation images) with the caption they are trained on, without per-step randomness."""
        return [dataclasses.replace(it, caption=fixed_caption(it.caption, self.options_of(it))) for it in items]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_idx = self.index[index]
        item, bucket = self.items[item_idx], self.item_buckets[item_idx]
        options = self.options_of(item)
        # A string seed is hashed with SHA-512 by `random`, so it is stable across processes and PYTHONHASHSEED.
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        flip = options.flip_aug and rng.random() < 0.5  # drawn first, always, so the caption draws stay aligned
        caption = process_caption(item.caption, options, rng, self.caption_time(index))
        (resized_w, resized_h), (top, left) = crop_geometry(item.size, bucket)
        pixels = latents = None
        if self._latents is not None:
            latents = self._latents[(item_idx, flip)]
        else:
            # Its own stream: the pixel options never change which captions a seed gives.
            img, (top, left), resized_w = self.pixels(item, bucket, options,
                                                      random.Random(f"{self.seed}:{self.epoch}:{index}:pixels"))
            pixels = to_tensor(img, flip)
        # The mask through the pixels' own geometry (the crop window before mirroring, then the mirror).
        mask = None if self.masks is None else self.masks.latent_mask(item.path, (resized_w, resized_h),
                                                                      (top, left), bucket, flip)
        if flip:
            left = resized_w - bucket[0] - left  # the crop window as seen in the mirrored image
        return {
            "pixel_values": pixels,
            "latents": latents,
            "caption": caption,
            "path": str(item.path),
            # SDXL's micro-conditioning order: (height, width) and (top, left).
            "original_size": (item.size[1], item.size[0]),
            "crop_top_left": (top, left),
            "target_size": (bucket[1], bucket[0]),
            "mask": mask,
            "is_reg": item.is_reg,
            # Multiplies the sample's loss in the step: prior_loss_weight for a regularisation image.
            "loss_weight": torch.tensor(self.loss_weight(item), dtype=torch.float32),
        }

    def loss_weight(self, item: ImageItem) -> float:
        return self.prior_loss_weight if item.is_reg else 1.0

    @property
    def num_reg_samples(self) -> int:
        """Regularisation samples per epoch after balancing."""
        return sum(it.repeats for it in self.items if it.is_reg)

    def pixels(self, item: ImageItem, bucket: Bucket, options: SubsetOptions,
               rng: random.Random) -> tuple[Image.Image, tuple[int, int], int]:
        """The image cropped to ``bucket`` with the pixel options: kohya's face crop (only without buckets, for
        file names that give the face), else a random or centered crop; then the colour change. Returns the image,
        its ``(crop_top, crop_left)`` and the width it was cropped from."""
        img = load_image(item.path)
        face = face_from_name(item.path) if options.face_crop_aug_range and not self.enable_bucket else None
        if face is not None and options.face_crop_aug_range is not None:
            img, crop, (resized_w, _) = crop_around_face(img, face, bucket, options.face_crop_aug_range,
                                                         options.random_crop, rng)
        else:
            (resized_w, _), _ = crop_geometry(img.size, bucket)
            img, crop = fit_to_bucket(img, bucket, rng if options.random_crop else None)
        if options.color_aug and (change := draw_color_change(rng)) is not None:
            img = apply_color_change(img, change)
        return img, crop, resized_w


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, turn size tuples into ``(B, 2)`` long tensors, keep strings as lists and all-None as None."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if all(v is None for v in values):
            out[key] = None
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], tuple):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out
