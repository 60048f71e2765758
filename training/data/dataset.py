"""The training dataset: one index per (image, repeat), a bucket per index, seeded caption and flip augmentation.

Randomness is seeded per ``(seed, epoch, index)``, never from a global RNG, so the sample at a given step is the same
on resume and does not depend on DataLoader worker count or order.
Call ``set_epoch`` on the dataset (and on the ``BucketBatchSampler``) before iterating each epoch. Worker processes
get a copy of the dataset when the DataLoader starts iterating, so do not use ``persistent_workers=True``: the
workers would keep the first epoch's number and repeat its augmentations.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from training.data.buckets import Bucket, assign_buckets
from training.data.captions import process_caption
from training.data.folder import DatasetScan, ImageItem, balance_reg
from training.data.images import crop_geometry, fit_to_bucket, load_image, to_tensor
from training.data.latents import Job, LatentCache
from training.data.subset import SubsetOptions

DEFAULT_OPTIONS = SubsetOptions()


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
        self.seed = seed
        self.prior_loss_weight = prior_loss_weight
        self.epoch = 0
        self._latents: dict[tuple[int, bool], torch.Tensor] | None = None

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
        return [(it.path, b, f) for it, b in zip(self.items, self.item_buckets, strict=True)
                for f in self.flips(it)]

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

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_idx = self.index[index]
        item, bucket = self.items[item_idx], self.item_buckets[item_idx]
        options = self.options_of(item)
        # A string seed is hashed with SHA-512 by `random`, so it is stable across processes and PYTHONHASHSEED.
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        flip = options.flip_aug and rng.random() < 0.5  # drawn first, always, so the caption draws stay aligned
        caption = process_caption(
            item.caption,
            shuffle=options.shuffle_caption,
            keep_tokens=options.keep_tokens,
            dropout_rate=options.caption_dropout_rate,
            rng=rng,
        )
        (resized_w, _), (top, left) = crop_geometry(item.size, bucket)
        pixels = latents = None
        if self._latents is not None:
            latents = self._latents[(item_idx, flip)]
        else:
            img, (top, left) = fit_to_bucket(load_image(item.path), bucket)
            pixels = to_tensor(img, flip)
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
