"""The bucket-pure batch sampler: every batch holds indices of one bucket, so its tensors share a shape.

Apart from ``buckets.py`` because it needs torch (its seeded generator), and the bucket math must stay importable by
the torch-free UI.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from training.contract.errors import UserError
from training.data.buckets import Bucket, batches_per_epoch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices where every batch comes from one bucket, so tensors in a batch share a shape.

    ``buckets[i]`` is the bucket of dataset index ``i`` (the index list already includes repeats). Each epoch,
    indices are shuffled within each bucket and then the batch order is shuffled, both from
    ``torch.Generator().manual_seed(seed + epoch)``: the same seed and epoch always give the same batches, which is
    what exact resume relies on. A bucket's last partial batch is kept, so ``len()`` is
    ``sum(ceil(n_bucket / batch_size))``, the same every epoch.

    ``datasets[i]`` is the ``[[datasets]]`` of a dataset config that index ``i`` belongs to: a batch never mixes two
    of them (sd-scripts draws each batch from one dataset), so a bucket is batched once per dataset.
    """

    def __init__(self, buckets: Sequence[Bucket], batch_size: int, seed: int, shuffle: bool = True,
                 datasets: Sequence[int] | None = None) -> None:
        if batch_size < 1:
            raise UserError(f"train_batch_size must be at least 1, got {batch_size}")
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, bucket in enumerate(buckets):
            dataset = datasets[index] if datasets is not None else 0
            groups[(dataset, *bucket)].append(index)
        self.groups = dict(sorted(groups.items()))  # fixed order, independent of dataset order quirks
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    def begin_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's shuffle; ``start_batch`` skips that many batches (for resuming mid-epoch) without
        loading their images. The skip holds until the next ``begin_epoch``; ``len()`` still counts the full epoch.

        Deliberately not named ``set_epoch``: accelerate's prepared DataLoader calls ``set_epoch(<its own pass
        counter>)`` on a batch sampler at every ``iter()``, which would reset the epoch and skip after a resume."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        self.epoch = epoch
        self.start_batch = start_batch

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in order (deterministic)."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        batches: list[list[int]] = []
        for indices in self.groups.values():
            if self.shuffle:
                indices = [indices[i] for i in torch.randperm(len(indices), generator=gen).tolist()]
            batches += [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        return batches_per_epoch((len(g) for g in self.groups.values()), self.batch_size)
