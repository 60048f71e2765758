"""kohya's image augmentations: color_aug, random_crop, face_crop_aug_range; the cached-latents rule; and one tiny
run that shows the caption and image options reach the step."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import make_image_dataset

import training.run.loop as loop_module
from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.data.dataset import TrainDataset
from training.data.folder import scan_dataset
from training.data.images import (
    ColorChange,
    apply_color_change,
    draw_color_change,
    face_crop_scale,
    face_from_name,
)
from training.data.subset import SubsetOptions
from training.plan.preflight import advice


def pixels_of(sample) -> np.ndarray:
    """A sample's CHW tensor in [-1, 1] back to HWC 0..255 integers."""
    return ((sample["pixel_values"].permute(1, 2, 0) + 1) * 127.5).round().to(torch.int16).numpy()


# --- color_aug ------------------------------------------------------------------------------------------------

def test_color_changes_are_drawn_at_kohyas_rates():
    draws = [draw_color_change(random.Random(s)) for s in range(4000)]
    hues = [d.amount for d in draws if d is not None and d.kind == "hue"]
    gammas = [d.amount for d in draws if d is not None and d.kind == "gamma"]
    # A third change (p = 0.33), half of those by hue, half by gamma; four standard errors of a binomial share.
    for count, p in [(len(hues) + len(gammas), 0.33), (len(hues), 0.165), (len(gammas), 0.165)]:
        assert abs(count / 4000 - p) < 4 * math.sqrt(p * (1 - p) / 4000), (count, p)
    assert all(-8 <= h <= 8 for h in hues) and min(hues) < -6 and max(hues) > 6  # half degrees: +-16 degrees
    assert all(0.95 <= g <= 1.05 for g in gammas)


def test_hue_shift_rotates_the_colour_and_keeps_each_pixels_brightest_and_darkest_channel():
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    # +8 units = +16 degrees: the green channel rises to 255 * 16/60 = 68; -8: blue does instead.
    assert apply_color_change(red, ColorChange("hue", 8)).getpixel((0, 0)) == (255, 68, 0)
    assert apply_color_change(red, ColorChange("hue", -8)).getpixel((0, 0)) == (255, 0, 68)
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    shifted = np.asarray(apply_color_change(img, ColorChange("hue", 5.5))).astype(int)
    assert np.abs(shifted.max(axis=2) - noise.max(axis=2)).max() <= 1  # HSV value kept
    assert np.abs(shifted.min(axis=2) - noise.min(axis=2)).max() <= 1  # and with it the saturation
    assert np.abs(shifted - noise).max() > 20  # the colours did move
    back = np.asarray(apply_color_change(Image.fromarray(shifted.astype(np.uint8)), ColorChange("hue", -5.5)))
    assert np.abs(back.astype(int) - noise).max() <= 2


def test_gamma_is_kohyas_power_on_the_0_to_255_values():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = Image.fromarray(np.stack([values] * 3, axis=-1), "RGB")
    for gamma in (0.95, 1.05):
        out = np.asarray(apply_color_change(img, ColorChange("gamma", gamma)))[..., 0]
        expected = [min(255, math.floor(v ** gamma)) for v in range(256)]
        assert out.ravel().tolist() == expected


def test_color_aug_in_the_dataset_changes_about_a_third_of_the_samples_by_hue_or_gamma(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"1_red": 1})
    plain = TrainDataset(scan_dataset(root), resolution=64)
    jittered = TrainDataset(scan_dataset(root), resolution=64, options=SubsetOptions(color_aug=True), seed=3)
    base = pixels_of(plain[0])
    changed = 0
    for epoch in range(90):
        jittered.set_epoch(epoch)
        out = pixels_of(jittered[0])
        if np.array_equal(out, base):
            continue
        changed += 1
        hue_like = np.abs(out.max(axis=2) - base.max(axis=2)).max() <= 1 and \
            np.abs(out.min(axis=2) - base.min(axis=2)).max() <= 1
        # A gamma maps each value through one increasing function: equal inputs stay equal, order is kept.
        order = np.argsort(base.ravel(), kind="stable")
        gamma_like = bool(np.all(np.diff(out.ravel()[order]) >= 0))
        assert hue_like or gamma_like, epoch
    assert 0.33 - 0.2 < changed / 90 < 0.33 + 0.2


# --- random_crop -----------------------------------------------------------------------------------------------

def gradient_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """An image whose every column differs: a crop's left edge can be read from its pixels."""
    w, h = size
    array = np.zeros((h, w, 3), dtype=np.uint8)
    array[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 2
    array[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 3
    Image.fromarray(array, "RGB").save(path)
    path.with_suffix(".txt").write_text("wide", encoding="utf-8")
    return array


def test_random_crop_takes_a_window_inside_the_image_that_moves_between_epochs(tmp_path):
    (tmp_path / "1_wide").mkdir()
    array = gradient_image(tmp_path / "1_wide" / "wide.png", (128, 64))
    options = SubsetOptions(random_crop=True)
    ds = TrainDataset(scan_dataset(tmp_path), resolution=64, enable_bucket=False, options=options, seed=2)
    lefts = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        sample = ds[0]
        top, left = sample["crop_top_left"]
        assert top == 0 and 0 <= left <= 128 - 64
        assert np.array_equal(pixels_of(sample), array[:, left : left + 64])  # exactly that window, not resized
        lefts.add(left)
    assert len(lefts) > 8
    centered = TrainDataset(scan_dataset(tmp_path), resolution=64, enable_bucket=False, seed=2)
    assert {centered[0]["crop_top_left"]} == {(0, 32)}  # off: always the center


# --- face_crop_aug_range ---------------------------------------------------------------------------------------

def face_image(path: Path, size: tuple[int, int], face: tuple[int, int, int, int]) -> None:
    cx, cy, fw, fh = face
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste((0, 0, 255), (cx - fw // 2, cy - fh // 2, cx + fw // 2, cy + fh // 2))
    img.save(path)
    path.with_suffix(".txt").write_text("face", encoding="utf-8")


def test_face_position_comes_from_the_file_name():
    assert face_from_name("a/portrait_60_50_20_22.png") == (60, 50, 20, 22)
    assert face_from_name("a/img_3.png") is None and face_from_name("a/x_a_b_c_d.png") is None


def test_face_crop_scale_keeps_the_face_within_the_range_of_the_crop():
    # 200x100 image, 64x64 crop, 20 px face, range 2..4 face sizes per crop side: 64 / (20 * 4) = 0.8 up to
    # 64 / (20 * 2) = 1.6, capped at 1 (kohya never enlarges for the face); 0.64 would just cover the crop.
    scales = [face_crop_scale((200, 100), (60, 50, 20, 20), (64, 64), (2.0, 4.0), random.Random(s)) for s in range(50)]
    assert all(0.8 <= s <= 1.0 for s in scales) and max(scales) - min(scales) > 0.1
    # A range it cannot reach without cutting the image: never below the scale that covers the crop.
    assert face_crop_scale((200, 100), (60, 50, 20, 20), (64, 64), (10.0, 10.0), random.Random(0)) == 0.64


def test_face_crop_centers_the_face_without_buckets_and_is_ignored_with_them(tmp_path):
    (tmp_path / "1_face").mkdir()
    face_image(tmp_path / "1_face" / "portrait_60_50_20_20.png", (200, 100), (60, 50, 20, 20))
    options = SubsetOptions(face_crop_aug_range="2.0,4.0")
    ds = TrainDataset(scan_dataset(tmp_path), resolution=64, enable_bucket=False, options=options, seed=0)
    sides = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        blue = (pixels_of(ds[0])[..., 2] > 200) & (pixels_of(ds[0])[..., 0] < 100)
        rows, cols = np.nonzero(blue)
        side = cols.max() - cols.min() + 1
        assert 16 - 1 <= side <= 20 + 1  # 20 px face at a scale of 0.8..1.0
        assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 1.5 and abs((rows.min() + rows.max()) / 2 - 31.5) <= 1.5
        sides.add(side)
    assert len(sides) > 1  # the scale is drawn each epoch
    bucketed = TrainDataset(scan_dataset(tmp_path), resolution=64, options=options, seed=0)
    plain = TrainDataset(scan_dataset(tmp_path), resolution=64, seed=0)
    assert np.array_equal(pixels_of(bucketed[0]), pixels_of(plain[0]))
    codes = [code for code, _ in advice(TrainConfig(face_crop_aug_range="2,4", cache_latents=False))]
    assert "face_crop_unused" in codes  # said, not silent
    assert "face_crop_unused" not in [c for c, _ in advice(TrainConfig(face_crop_aug_range="2,4",
                                                                        cache_latents=False, enable_bucket=False))]


# --- cached latents ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, named", [
    ({"color_aug": True}, "color_aug"),
    ({"random_crop": True, "color_aug": True}, "color_aug and random_crop"),
    ({"face_crop_aug_range": "2,4", "enable_bucket": False}, "face_crop_aug_range"),
])
def test_cached_latents_are_refused_with_augmentations_that_change_the_pixels(settings, named):
    with pytest.raises(ValueError, match="cache_latents") as err:
        TrainConfig(**settings)
    assert named in str(err.value) and "cache_latents = false" in str(err.value)
    TrainConfig(**settings, cache_latents=False)  # the way out the message gives


def test_face_crop_with_buckets_does_not_block_cached_latents():
    TrainConfig(face_crop_aug_range="2,4")  # ignored with buckets, so nothing changes per step


def test_a_subset_with_pixel_augmentations_refuses_cached_latents(tmp_path):
    scan = scan_dataset(make_image_dataset(tmp_path / "data", {"1_red": 1}))
    scan = dataclasses.replace(scan, items=[dataclasses.replace(scan.items[0],
                                                                options=SubsetOptions(random_crop=True))])
    with pytest.raises(UserError, match="cache_latents = true with random_crop in a subset"):
        TrainDataset(scan, resolution=64).latent_jobs()


# --- one tiny run: the options reach the step ---------------------------------------------------------------

def test_caption_and_image_options_reach_the_step(tmp_path, tiny_sd1):
    """Token warm-up over 4 steps behind a kept prefix, with colour jitter and random crops on the pixels."""
    data = make_image_dataset(tmp_path / "data", {"2_red": 3})  # captions "red, circle, variant <i>"
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(tiny_sd1), train_data_dir=str(data), output_dir=str(tmp_path / "run"),
        resolution="64", min_bucket_reso=64, max_bucket_reso=128, network_dim=4, network_alpha=2.0,
        learning_rate=1e-3, mixed_precision="no", seed=5, network_train_unet_only=True, validation_every_n_steps=0,
        max_train_steps=6, cache_latents=False, color_aug=True, random_crop=True, caption_prefix="sks |||",
        keep_tokens_separator="|||", token_warmup_min=1, token_warmup_step=4, max_data_loader_n_workers=0)
    seen: list[str] = []
    real = loop_module.conditioning

    def conditioning(parts, captions):
        seen.extend(captions)
        return real(parts, captions)

    from training.run.runner import run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_module, "conditioning", conditioning)
        assert run(cfg) == "done"
    # One image per step: at step s (0-based) floor(s * (3 - 1) / 4) + 1 of the 3 flexible tags, all from step 4.
    assert [len(c.split(", ")) for c in seen] == [1 + n for n in (1, 1, 2, 2, 3, 3)], seen
    assert all(c.startswith("sks, red") for c in seen), seen
    lora = next((tmp_path / "run").glob("*.safetensors"))
    header = json.loads(lora.read_bytes()[8 : 8 + int.from_bytes(lora.read_bytes()[:8], "little")])
    meta = header["__metadata__"]
    assert (meta["ss_color_aug"], meta["ss_random_crop"], meta["ss_face_crop_aug_range"]) == ("True", "True", "None")


def test_text_encoder_cache_holds_the_captions_as_trained_and_is_off_when_they_vary(tmp_path, tiny_sd1):
    from training.models.loading import load_base_model
    from training.run.prepare import cache_text

    base = load_base_model(str(tiny_sd1))
    scan = scan_dataset(make_image_dataset(tmp_path / "data", {"1_red": 2}))
    steady = TrainDataset(scan, resolution=64, options=SubsetOptions(caption_prefix="sks,", caption_dropout_rate=0.5))
    cfg = TrainConfig(network_train_unet_only=True)
    cache = cache_text(cfg, base, steady.fixed_captions(), "cpu")
    assert cache is not None and set(cache) == {"", "sks, red, circle, variant 0", "sks, red, circle, variant 1"}
    assert all(steady[i]["caption"] in cache for i in range(len(steady)))  # every step finds its caption
    for varying in ({"caption_tag_dropout_rate": 0.2}, {"token_warmup_step": 3}, {"enable_wildcard": True}):
        shifting = TrainDataset(scan, resolution=64, options=SubsetOptions(**varying))
        assert cache_text(cfg, base, shifting.fixed_captions(), "cpu") is None, varying
