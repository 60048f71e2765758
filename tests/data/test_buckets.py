"""Aspect-ratio buckets, the bucket batch sampler, and the dataset + DataLoader together."""

from __future__ import annotations

import math
import random

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from training.contract.errors import UserError
from training.data.buckets import assign_bucket, assign_buckets, bucket_table, make_buckets
from training.data.dataset import TrainDataset, collate
from training.data.folder import scan_dataset
from training.data.sampler import BucketBatchSampler
from training.data.subset import SubsetOptions

RES = (512, 512)


@pytest.fixture(scope="module")
def buckets():
    return make_buckets(RES, 256, 1024, 64)


def test_buckets_are_step_multiples_within_area(buckets):
    assert (512, 512) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert w * h <= 512 * 512
    assert all((h, w) in buckets for w, h in buckets)  # portrait and landscape alike


def test_small_image_is_never_upscaled(buckets):
    assert assign_bucket((300, 200), buckets, RES, 64) == (256, 192)
    assert assign_bucket((100, 40), buckets, RES, 64) == (64, 64)  # at least one step
    assert assign_bucket((512, 512), buckets, RES, 64) == (512, 512)


def test_wide_image_follows_kohyas_arithmetic(buckets):
    # Aspect 2.0: kohya's candidates are 640x384 (1.67) and 704x320 (2.2); 704x320 is nearer.
    assert assign_bucket((1024, 512), buckets, RES, 64) == (704, 320)
    assert assign_bucket((3000, 4000), buckets, RES, 64) == (448, 576)


# --- kohya's rules, re-implemented here as the oracle (sd-scripts: model_util.make_bucket_resolutions,
# train_util.BucketManager.select_bucket and round_to_steps). Our rule: kohya's nearest-aspect bucket when the image
# covers it (kohya's default mode, which then only downscales), else kohya's bucket_no_upscale size from the image.


def kohya_bucket_list(resolution, min_size, max_size, step):
    max_area = resolution[0] * resolution[1]
    square = int(math.sqrt(max_area) // step) * step
    resos = {(square, square)}
    for width in range(min_size, max_size + 1, step):
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            resos |= {(width, height), (height, width)}
    return sorted(resos)


def kohya_round_to_steps(x, step):
    x = int(x + 0.5)
    return x - x % step


def kohya_nearest_bucket(size, resos):
    """kohya's default mode: the exact size if it is a bucket, else the first bucket of least aspect error."""
    if size in resos:
        return size
    errors = [abs(w / h - size[0] / size[1]) for w, h in resos]
    return resos[errors.index(min(errors))]


def kohya_no_upscale_bucket(size, max_area, step):
    """kohya's bucket_no_upscale: an image above max_area is shrunk to it (rounding whichever side keeps the aspect
    closer), then the size is floored to steps."""
    width, height = size
    aspect = width / height
    resized = size
    if width * height > max_area:
        resized_w = math.sqrt(max_area * aspect)
        resized_h = max_area / resized_w
        w_rounded = kohya_round_to_steps(resized_w, step)
        aspect_w = w_rounded / kohya_round_to_steps(w_rounded / aspect, step)
        h_rounded = kohya_round_to_steps(resized_h, step)
        aspect_h = kohya_round_to_steps(h_rounded * aspect, step) / h_rounded
        if abs(aspect_w - aspect) < abs(aspect_h - aspect):
            resized = (w_rounded, int(w_rounded / aspect + 0.5))
        else:
            resized = (int(h_rounded * aspect + 0.5), h_rounded)
    return resized[0] - resized[0] % step, resized[1] - resized[1] % step


def kohya_bucket(size, resolution, min_size=256, max_size=1024, step=64):
    nearest = kohya_nearest_bucket(size, kohya_bucket_list(resolution, min_size, max_size, step))
    if size[0] >= nearest[0] and size[1] >= nearest[1]:
        return nearest
    return kohya_no_upscale_bucket(size, resolution[0] * resolution[1], step)


def our_bucket(size, resolution, min_size=256, max_size=1024, step=64):
    return assign_buckets([size], resolution=resolution, min_reso=min_size, max_reso=max_size, step=step)[0]


@pytest.mark.parametrize(("size", "resolution"), [((96, 4096), (768, 512)), ((160, 2560), (640, 640)),
                                                  ((200, 2048), (640, 640))])
def test_an_image_of_exactly_the_bucket_area_is_floored_not_shrunk(size, resolution):
    """kohya shrinks only images larger than the area; one of exactly the area is floored to steps."""
    assert size[0] * size[1] == resolution[0] * resolution[1]
    assert our_bucket(size, resolution) == kohya_bucket(size, resolution)


@pytest.mark.parametrize(("size", "resolution", "min_size", "max_size"), [
    ((256, 1056), (512, 512), 256, 1024),    # as wide as its nearest bucket: that bucket, not a shrink
    ((1056, 256), (512, 512), 256, 1024),    # as tall as its nearest bucket: the same
    ((2688, 256), (640, 640), 320, 960),     # both roundings of the shrink equally far from the aspect: kohya's first
])
def test_edge_sizes_get_kohyas_bucket(size, resolution, min_size, max_size):
    assert our_bucket(size, resolution, min_size, max_size) == kohya_bucket(size, resolution, min_size, max_size)


def test_bucket_list_is_kohyas():
    for resolution, min_size, max_size in [(RES, 256, 1024), ((1024, 1024), 256, 2048), ((768, 512), 320, 1536)]:
        assert make_buckets(resolution, min_size, max_size, 64) == kohya_bucket_list(resolution, min_size,
                                                                                     max_size, 64)


@pytest.mark.parametrize("size", [
    (1024, 512), (3000, 4000), (2000, 900), (900, 2000),  # wide and tall, shrunk into a listed bucket
    (900, 280),  # wide, small enough to fit its nearest bucket
    (530, 500),  # above the area but not covering 512x512: shrunk from the image (448x448, not 512x448)
    (1474, 180), (178, 1756),  # very wide/tall and above the area: kohya's shrink rounding, not a crop
    (134, 2143), (2143, 134),
])
def test_buckets_match_kohya_at_512(size):
    assert our_bucket(size, RES) == kohya_bucket(size, RES)


def test_very_tall_oversized_image_gets_kohyas_bucket():
    # The oracle against the number kohya's trainer prints for this image: rounding the height keeps the aspect
    # closer (128/2048 vs 128/1984), so the bucket is 128x2048.
    assert kohya_bucket((134, 2143), RES) == (128, 2048)
    assert our_bucket((134, 2143), RES) == (128, 2048)
    assert our_bucket((2143, 134), RES) == (2048, 128)


def test_oversized_image_is_shrunk_to_the_area():
    for size in [(530, 500), (1474, 180), (700, 400)]:
        w, h = our_bucket(size, RES)
        assert w * h <= 512 * 512 and (w, h) == kohya_no_upscale_bucket(size, 512 * 512, 64)


def test_aspect_midway_between_two_buckets_takes_kohyas_first():
    # 1410x3008 is 15:32, midway between 448x1024 (14:32) and 512x1024 (16:32); kohya's argmin takes the first.
    assert kohya_bucket((1410, 3008), (1024, 1024)) == (448, 1024)
    assert our_bucket((1410, 3008), (1024, 1024)) == (448, 1024)


def test_many_sizes_and_settings_match_kohya():
    rng = random.Random(0)
    settings = [(RES, 256, 1024), ((768, 768), 320, 1536), ((1024, 1024), 256, 2048), ((768, 512), 256, 2048)]
    checked = 0
    while checked < 3000:
        size = (rng.randint(64, 5000), rng.randint(64, 5000))
        if not 1 / 12 < size[0] / size[1] < 12:  # kohya divides by zero on a side rounded to 0 steps
            continue
        resolution, min_size, max_size = rng.choice(settings)
        assert our_bucket(size, resolution, min_size, max_size) == kohya_bucket(size, resolution, min_size,
                                                                                max_size), (size, resolution)
        checked += 1


def test_image_narrower_than_its_bucket_is_not_stretched(buckets):
    # Aspect 1.54 is nearest 640x384, which is wider than the image: the bucket comes from the image, floored.
    assert assign_bucket((600, 390), buckets, RES, 64) == (576, 384)


@pytest.mark.parametrize(("size", "expected"), [
    # Aspect 10: the largest step-multiple size of exactly that aspect within 512x512 is 1280x128 (1920x192 is over).
    ((2000, 200), (1280, 128)),
    # Aspect 1/12: 128x1536 keeps it exactly (1536 / 128 = 12), and 192x2304 is over the area.
    ((250, 3000), (128, 1536)),
])
def test_extreme_image_above_the_area_shrinks_to_its_own_aspect(buckets, size, expected):
    w, h = assign_bucket(size, buckets, RES, 64)
    assert (w, h) == expected
    assert w * h <= 512 * 512 and w / h == pytest.approx(size[0] / size[1])


def kohya_select_bucket(w: int, h: int, max_area: int, step: int) -> tuple[int, int]:
    """kohya's BucketManager.select_bucket for an image above the area (bucket_no_upscale), written out here."""
    def round_to_steps(x: float) -> int:
        x = int(x + 0.5)
        return x - x % step

    ar = w / h
    rw = math.sqrt(max_area * ar)
    rh = max_area / rw
    bw, bh = round_to_steps(rw), round_to_steps(rh)
    ar_w = bw / round_to_steps(bw / ar)
    ar_h = round_to_steps(bh * ar) / bh
    size = (bw, int(bw / ar + 0.5)) if abs(ar_w - ar) < abs(ar_h - ar) else (int(bh * ar + 0.5), bh)
    return size[0] - size[0] % step, size[1] - size[1] % step


# The last four land within half a pixel of a rounding edge, where kohya rounds rather than truncates.
@pytest.mark.parametrize("size", [(1999, 211), (3001, 170), (170, 2900), (2400, 230), (211, 1999), (1408, 196),
                                  (1408, 199), (1415, 250), (250, 1415)])
def test_shrinking_follows_kohyas_select_bucket(buckets, size):
    assert assign_bucket(size, buckets, RES, 64) == kohya_select_bucket(*size, 512 * 512, 64)


def test_non_square_resolution_uses_its_own_area():
    area = 768 * 512
    square = max(s for s in range(64, 1025, 64) if s * s <= area)  # 576
    assert assign_buckets([(1000, 1000), (2200, 255)], resolution=(768, 512)) == [
        (square, square), kohya_select_bucket(2200, 255, area, 64)]


def test_bucketing_is_on_by_default_with_kohyas_limits():
    assert assign_buckets([(1024, 512)], resolution=512) == [(704, 320)]
    # max_bucket_reso 1024 caps the long side even where the area would allow more.
    assert assign_buckets([(300, 1200)], resolution=1024) == [(256, 1024)]


def test_without_bucketing_everything_goes_to_resolution():
    assert assign_buckets([(300, 200), (2000, 900)], resolution=512, enable_bucket=False) == [(512, 512)] * 2
    assert assign_buckets([(300, 200)], resolution=(768, 512), enable_bucket=False) == [(768, 512)]


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="bucket_reso_steps"):
        make_buckets(RES, 256, 1024, 60)
    with pytest.raises(UserError, match="min_bucket_reso"):
        make_buckets(RES, 1024, 256, 64)
    with pytest.raises(UserError, match="bucket_reso_steps"):
        make_buckets(RES, 256, 1024, 0)
    assert make_buckets(RES, 512, 512, 64) == [(512, 512)]  # min equal to max is one size, not an error


def test_bucket_table_lists_each_bucket():
    table = bucket_table({(512, 512): 10, (704, 320): 3})
    assert "512x512" in table and "704x320" in table and "2.20" in table and "13" in table.splitlines()[-1]


def test_bucket_table_rows_go_from_tallest_to_widest_aspect():
    counts = {(704, 320): 1, (512, 512): 2, (320, 704): 3, (640, 384): 4, (512, 256): 5}
    rows = [line.split()[0] for line in bucket_table(counts).splitlines()[1:-1]]
    assert rows == [f"{w}x{h}" for w, h in sorted(counts, key=lambda b: b[0] / b[1])]


def _sampler_buckets():
    return [(64, 64)] * 7 + [(128, 64)] * 3 + [(64, 128)] * 1


def test_sampler_one_bucket_per_batch_and_exact_len():
    per_index = _sampler_buckets()
    s = BucketBatchSampler(per_index, batch_size=2, seed=3)
    assert len(s) == math.ceil(7 / 2) + math.ceil(3 / 2) + 1 == 7
    for epoch in range(4):
        s.begin_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert sorted(i for b in batches for i in b) == list(range(11))  # nothing dropped, nothing twice
        assert all(len({per_index[i] for i in b}) == 1 for b in batches)


def test_sampler_is_deterministic_per_seed_and_epoch():
    a, b = BucketBatchSampler(_sampler_buckets(), 2, seed=3), BucketBatchSampler(_sampler_buckets(), 2, seed=3)
    a.begin_epoch(1)
    b.begin_epoch(1)
    assert list(a) == list(b)
    assert a.batches(0) != a.batches(1)
    assert BucketBatchSampler(_sampler_buckets(), 2, seed=4).batches(1) != a.batches(1)


def test_sampler_resume_skips_first_batches():
    s = BucketBatchSampler(_sampler_buckets(), 2, seed=0)
    full = s.batches(2)
    s.begin_epoch(2, start_batch=3)
    assert list(s) == full[3:]
    assert len(s) == len(full)
    s.begin_epoch(3)
    assert list(s) == s.batches(3)


def test_dataset_with_loader_gives_bucket_shaped_batches(tmp_path):
    for i, size in enumerate([(128, 128), (128, 128), (300, 100), (64, 64)]):
        d = tmp_path / "2_shapes"
        d.mkdir(exist_ok=True)
        Image.new("RGB", size, (i * 40, 0, 0)).save(d / f"{i}.png")
    ds = TrainDataset(scan_dataset(tmp_path), resolution=128, min_reso=64, max_reso=256,
                      options=SubsetOptions(flip_aug=True), seed=1)
    assert len(ds) == 8
    assert ds.bucket_counts() == {(128, 128): 2, (192, 64): 1, (64, 64): 1}
    sampler = BucketBatchSampler(ds.buckets, batch_size=3, seed=1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert len(batches) == len(sampler) == 4
    for batch in batches:
        n, _, h, w = batch["pixel_values"].shape
        assert batch["target_size"].tolist() == [[h, w]] * n
        assert len(batch["caption"]) == len(batch["path"]) == n and batch["latents"] is None
        assert batch["original_size"].shape == (n, 2) and batch["crop_top_left"].dtype == torch.long
