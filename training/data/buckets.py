"""Aspect-ratio bucketing as kohya does it, with ``bucket_no_upscale`` always on.

Sizes and buckets are ``(width, height)`` throughout, like PIL and kohya. Torch-free on purpose: the UI's dataset
check shows the same bucket table the trainer will use. The batch sampler (torch) lives in ``sampler.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from training.contract.errors import UserError

if TYPE_CHECKING:
    from training.contract.config import TrainConfig
    from training.data.folder import ImageItem

Bucket = tuple[int, int]


def make_buckets(resolution: tuple[int, int], min_reso: int, max_reso: int, step: int) -> list[Bucket]:
    """kohya's ``make_bucket_resolutions``: the largest buckets (multiples of ``step``) within the resolution's area.

    For every width ``min_reso..max_reso`` in ``step``s, the tallest height with ``w * h <= area`` (capped at
    ``max_reso``, dropped below ``min_reso``), the transposed bucket, and the largest square. Smaller buckets of a
    similar shape are left out on purpose: the nearest-aspect rule would pick them over a slightly-off larger one and
    train at a needlessly low resolution. Sorted by (w, h).
    """
    _check_settings(min_reso, max_reso, step)
    area = resolution[0] * resolution[1]
    square = int(math.sqrt(area) // step) * step
    buckets = {(square, square)}
    for width in range(min_reso, max_reso + 1, step):
        height = min(max_reso, int((area // width) // step) * step)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def _check_settings(min_reso: int, max_reso: int, step: int) -> None:
    if step <= 0 or step % 8:
        raise UserError(f"bucket_reso_steps must be a positive multiple of 8 (64 is usual), got {step}")
    if min_reso > max_reso:
        raise UserError(f"min_bucket_reso ({min_reso}) must not be larger than max_bucket_reso ({max_reso})")


def assign_bucket(size: tuple[int, int], buckets: Sequence[Bucket], resolution: tuple[int, int], step: int) -> Bucket:
    """Choose the bucket whose aspect ratio is nearest the image's, never upscaling.

    If the image does not cover the chosen bucket in both directions (fitting would upscale it), the bucket is
    computed from the image instead, as kohya's ``bucket_no_upscale`` does: the image's size floored to multiples of
    ``step`` (at least one ``step``), the image shrunk first if it is larger than the resolution's area.
    """
    w, h = size
    aspect = w / h
    # An aspect midway between two buckets (a 15:32 image between 448x1024 and 512x1024) goes to the first in
    # (w, h) order, as kohya's argmin does: the same images land in the same buckets as in kohya.
    bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))
    if w >= bucket[0] and h >= bucket[1]:
        return bucket
    return _bucket_from_image(size, resolution[0] * resolution[1], step)


def _bucket_from_image(size: tuple[int, int], max_area: int, step: int) -> Bucket:
    """The image's own size floored to ``step`` (kohya's ``bucket_no_upscale``); if the image is larger than
    ``max_area``, first shrink it to the area the way kohya's ``select_bucket`` does. The test is on the image's area,
    not the floored size's, as in kohya: 1474x180 at 512 px is shrunk to 1024x128, not cropped to 1472x128."""
    w, h = size
    if w * h <= max_area:
        return max(step, w - w % step), max(step, h - h % step)
    aspect = w / h
    rw = math.sqrt(max_area * aspect)
    bw, bh = _round_to_step(rw, step), _round_to_step(max_area / rw, step)
    # Round the width or the height to steps, whichever keeps the aspect ratio closer (kohya's rule).
    err_w = abs(bw / max(step, _round_to_step(bw / aspect, step)) - aspect)
    err_h = abs(max(step, _round_to_step(bh * aspect, step)) / max(step, bh) - aspect)
    w, h = (bw, int(bw / aspect + 0.5)) if err_w < err_h else (int(bh * aspect + 0.5), bh)
    return max(step, w - w % step), max(step, h - h % step)


def _round_to_step(x: float, step: int) -> int:
    x = int(x + 0.5)
    return x - x % step


def assign_buckets(
    sizes: Sequence[tuple[int, int]],
    *,
    resolution: int | tuple[int, int],
    enable_bucket: bool = True,
    min_reso: int = 256,
    max_reso: int = 1024,
    step: int = 64,
) -> list[Bucket]:
    """One bucket per image size. Without bucketing every image goes to ``resolution`` (center crop, upscaling
    allowed, as kohya does), so all batches share one shape."""
    res = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if not enable_bucket:
        return [res] * len(sizes)
    buckets = make_buckets(res, min_reso, max_reso, step)
    return [assign_bucket(s, buckets, res, step) for s in sizes]


def bucket_table(assignments: dict[Bucket, int]) -> str:
    """A small table to print at start: one row per bucket (WxH, aspect, images), widest aspect last."""
    rows = sorted(assignments.items(), key=lambda kv: (kv[0][0] / kv[0][1], kv[0]))
    lines = [f"{'bucket':>11}  {'aspect':>6}  {'images':>6}"]
    lines += [f"{f'{w}x{h}':>11}  {w / h:>6.2f}  {n:>6}" for (w, h), n in rows]
    lines.append(f"{'total':>11}  {'':>6}  {sum(assignments.values()):>6}")
    return "\n".join(lines)


def batches_per_epoch(bucket_sizes: Iterable[int], batch_size: int) -> int:
    """Each bucket is batched on its own, and a partial last batch still costs a batch."""
    return sum(math.ceil(n / batch_size) for n in bucket_sizes)


def buckets_for(cfg: TrainConfig, items: list[ImageItem]) -> list[tuple[int, int]]:
    """Each image's bucket under the config's bucket settings (as the training dataset assigns them)."""
    return assign_buckets([it.size for it in items], resolution=cfg.resolution_wh, enable_bucket=cfg.enable_bucket,
                          min_reso=cfg.min_bucket_reso, max_reso=cfg.max_bucket_reso, step=cfg.bucket_reso_steps)
