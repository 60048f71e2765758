"""The dataset check: concepts and repeats, problems named by file, the bucket table and a step plan that matches
what the trainer will actually run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.data.folder import scan_dataset
from training.plan.dataset_check import TOKEN_WINDOW, NoTrainingImages, check_dataset, count_tokens

ROOT = Path(__file__).resolve().parents[2]


def pic(path: Path, size: tuple[int, int], seed: int, caption: str | None = None) -> Path:
    """A smooth random colour field: every seed looks different, so only real copies hash alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = (np.random.default_rng(seed).random((6, 6, 3)) * 255).astype("uint8")
    Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def cfg_for(root: Path, **settings) -> TrainConfig:
    return TrainConfig(train_data_dir=str(root), **settings)


def test_step_plan_shows_the_formula_with_the_numbers(tmp_path):
    for i in range(3):
        pic(tmp_path / "10_cat" / f"c{i}.png", (512, 512), i, "cat")
    for i in range(2):
        pic(tmp_path / "3_dog" / f"d{i}.png", (512, 512), 10 + i, "dog")
    report = check_dataset(cfg_for(tmp_path, train_batch_size=4, gradient_accumulation_steps=2, max_train_epochs=3))

    assert [(c.folder, c.images, c.repeats, c.per_epoch) for c in report.concepts] == [
        ("10_cat", 3, 10, 30), ("3_dog", 2, 3, 6)]
    plan = report.plan
    # 36 images x repeats in one bucket -> ceil(36 / 4) = 9 batches -> ceil(9 / 2) = 5 steps -> x 3 epochs.
    assert (plan.per_epoch, plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (36, 9, 5, 15)
    text = report.to_text()
    assert "3 × 10 (10_cat) + 2 × 3 (3_dog) = 36 per epoch" in text
    assert "÷ train_batch_size 4 → 9 batches per epoch" in text
    assert "÷ gradient_accumulation_steps 2 → 5 steps per epoch" in text
    assert "× max_train_epochs 3 = 15 steps" in text
    assert report.problems == 0 and "ready to train" in text
    assert str(report) == text


def test_max_train_steps_sets_the_length_without_epochs(tmp_path):
    for i in range(4):
        pic(tmp_path / "5_a" / f"{i}.png", (512, 512), i, "a")
    plan = check_dataset(cfg_for(tmp_path, max_train_steps=50)).plan
    assert (plan.steps_per_epoch, plan.total_steps, plan.total_epochs) == (20, 50, 3)
    assert "max_train_steps = 50 steps = 2.5 epochs (3 started, the last one cut short)" in plan.lines()[-1]
    assert "max_train_steps = **50 steps** = 2.5 epochs" in plan.lines(markdown=True)[-1]


@pytest.mark.parametrize("settings", [
    {"train_batch_size": 3, "max_train_steps": 70},
    {"train_batch_size": 2, "gradient_accumulation_steps": 3, "max_train_epochs": 4},
    {"train_batch_size": 2, "validation_split": 0.25, "max_train_epochs": 2, "seed": 7},
    {"train_batch_size": 4, "enable_bucket": False, "max_train_epochs": 1},
])
def test_plan_matches_the_trainer(tmp_path, settings):
    """The plan is computed without torch; the trainer's own code (prepare.py, the sampler) must agree with it."""
    from training.data.dataset import TrainDataset
    from training.data.sampler import BucketBatchSampler
    from training.plan.schedule import Schedule, split_validation
    from training.run.prepare import make_dataset

    sizes = [(512, 512), (512, 768), (768, 512), (640, 384), (512, 512), (300, 300), (512, 640)]
    for i, size in enumerate(sizes):
        pic(tmp_path / ("4_a" if i % 2 else "7_b") / f"{i}.png", size, i, "x")
    cfg = cfg_for(tmp_path, **settings)
    plan = check_dataset(cfg, similar=False).plan

    scan = scan_dataset(tmp_path)
    train, _validation, _kind = split_validation(cfg, scan.items)  # "train-subset" validates on training images
    dataset: TrainDataset = make_dataset(cfg, type(scan)(items=train, concepts=scan.concepts))
    expected = Schedule.build(cfg, len(BucketBatchSampler(dataset.buckets, cfg.train_batch_size, cfg.seed)), 1)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps, plan.total_epochs) == (
        expected.batches_per_epoch, expected.steps_per_epoch, expected.total_steps, expected.total_epochs)
    assert (plan.images, plan.held_out, plan.per_epoch) == (len(train), len(scan.items) - len(train), len(dataset))


def test_problems_are_found_and_named(tmp_path):
    cat, dog = tmp_path / "10_cat", tmp_path / "3_dog"
    pic(cat / "big.png", (512, 768), 1, "cat, standing")
    pic(cat / "other.png", (512, 512), 2, "cat, sitting")
    pic(cat / "tiny.png", (200, 150), 3, "cat")
    dog.mkdir()
    shutil.copy(cat / "other.png", dog / "other_copy.png")
    Image.open(cat / "big.png").convert("RGB").resize((256, 384)).save(dog / "big_small.jpg", quality=80)
    for name in ("other_copy", "big_small"):
        (dog / f"{name}.txt").write_text("dog")
    pic(dog / "long.png", (512, 512), 4, ", ".join(f"red hat {i}" for i in range(30)))
    pic(dog / "no_caption.png", (512, 512), 5)
    (dog / "broken.png").write_bytes(b"not an image")
    for colour, name in (((200, 30, 30), "flat_red.png"), ((30, 30, 200), "flat_blue.png")):
        Image.new("RGB", (512, 512), colour).save(cat / name)
        (cat / name).with_suffix(".txt").write_text("flat")

    report = check_dataset(cfg_for(tmp_path))

    assert [(f.path.name, f.detail) for f in report.tiny] == [
        ("tiny.png", "200x150, trains in a 192x128 bucket"), ("big_small.jpg", "256x384, trains in a 256x384 bucket")]
    assert "min_bucket_reso (256 px)" in report.tiny_rule and "512x512" in report.tiny_rule
    assert report.exact_duplicates == [[cat / "other.png", dog / "other_copy.png"]]
    # A resized, re-encoded copy looks the same; different flat colours and the identical pair are not listed here.
    assert report.similar_images == [[cat / "big.png", dog / "big_small.jpg"]]
    assert [(f.path.name, int(f.detail.split()[0]) > TOKEN_WINDOW) for f in report.long_captions] == [
        ("long.txt", True)]
    assert report.missing_captions == [dog / "no_caption.png"]
    assert [f.path.name for f in report.unreadable] == ["broken.png"]

    lines = report.problem_lines()
    assert any("no_caption.png" in line and "no (or an empty) .txt caption" in line for line in lines)
    assert any("broken.png" in line and "unreadable" in line for line in lines)
    assert any("identical files" in line and "10_cat/other.png = 3_dog/other_copy.png" in line for line in lines)
    assert any("75-token window" in line and "long.txt (" in line for line in lines)
    md = report.to_markdown()
    assert "no\\_caption.png" in md and "⚠️" in md  # underscores escaped, or markdown would italicise names


def test_token_count_is_clip_tokens_without_begin_and_end():
    assert count_tokens(["a photo of a cat", ""]) == [5, 0]
    assert count_tokens([", ".join(["red"] * 38)])[0] == 75  # 38 words + 37 commas


def test_without_bucketing_small_images_are_upscaled(tmp_path):
    pic(tmp_path / "img" / "small.png", (256, 256), 1, "x")
    pic(tmp_path / "img" / "ok.png", (600, 600), 2, "y")
    report = check_dataset(cfg_for(tmp_path / "img", enable_bucket=False))
    assert [(f.path.name, f.detail) for f in report.tiny] == [("small.png", "256x256, upscaled 2.0x to 512x512")]
    assert report.buckets == {(512, 512): 2}


def test_bad_folders_give_one_line(tmp_path):
    with pytest.raises(UserError, match="train_data_dir is empty"):
        check_dataset(cfg_for(Path(" ")))
    with pytest.raises(UserError, match=r"not found: .*missing"):
        check_dataset(cfg_for(tmp_path / "missing"))
    (tmp_path / "empty" / "10_x").mkdir(parents=True)
    with pytest.raises(UserError, match="no training images in") as err:
        check_dataset(cfg_for(tmp_path / "empty"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("layout", [[], ["10_x/"], ["notes.md", "10_x/readme.txt"], ["photos/a.png"]])
def test_a_folder_without_images_is_never_ready_and_shows_what_a_dataset_looks_like(tmp_path, layout):
    root = tmp_path / "ds"
    root.mkdir()
    for name in layout:
        if name.endswith("/"):
            (root / name).mkdir(parents=True)
        elif name.endswith(".png"):
            pic(root / name, (64, 64), 1)  # in a folder the trainer ignores: not named like '10_name'
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("text")
    with pytest.raises(NoTrainingImages) as err:
        check_dataset(cfg_for(root))
    shown = err.value.to_markdown()
    assert f"no training images in {root}" in str(err.value) and "ready" not in shown
    assert "10_mychar/" in shown and "photo1.txt" in shown  # the example layout
    if layout == ["photos/a.png"]:
        assert "ignored 1 folder(s)" in shown and "photos" in shown


def test_check_stays_torch_free(tmp_path):
    """The UI process runs the check: neither it nor the tokenizer may pull torch in."""
    pic(tmp_path / "2_a" / "x.png", (64, 64), 1, "a cat")
    probe = ("import sys; from training.contract.config import TrainConfig; "
             "from training.plan.dataset_check import check_dataset; "
             f"r = check_dataset(TrainConfig(train_data_dir={str(tmp_path)!r})); "
             "print(r.plan.total_steps, sorted({'torch', 'diffusers', 'peft'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "1600 []"
