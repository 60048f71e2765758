"""kohya's dataset config (dataset_config): subsets with their own repeats and options, values looked up subset ->
dataset -> [general] -> the run, dataset-level settings that become the run's, and bad files as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.data.dataset import TrainDataset, collate
from training.data.dataset_config import dataset_facts, dataset_settings, scan_dataset_config
from training.data.sampler import BucketBatchSampler
from training.plan.dataset_check import check_dataset


def half_dark(path: Path, caption: str | None) -> None:
    """Left half black, right half white: a flipped copy is told apart by its first column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 32, 64))
    img.save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def run_config(config: Path, **extra) -> TrainConfig:
    return TrainConfig(dataset_config=str(config), resolution="64", min_bucket_reso=64, max_bucket_reso=128,
                       validation_every_n_steps=0, max_train_epochs=1, **extra)


TWO_SUBSETS = """
[general]
shuffle_caption = true
caption_extension = ".txt"

[[datasets]]
resolution = 64
batch_size = 2

  [[datasets.subsets]]
  image_dir = "chars"
  num_repeats = 3
  keep_tokens = 1
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "style"
  num_repeats = 1
  keep_tokens = 2
"""


@pytest.fixture
def two_subsets(tmp_path) -> TrainConfig:
    for i in range(2):
        half_dark(tmp_path / "chars" / f"c{i}.png", f"mychar, tag{i}a, tag{i}b, tag{i}c")
        half_dark(tmp_path / "style" / f"s{i}.png", f"mystyle, painted, sty{i}a, sty{i}b")
    return run_config(write_config(tmp_path, TWO_SUBSETS), train_data_dir="")


def test_each_subset_gives_its_images_their_own_options_and_repeats(two_subsets):
    scan = scan_dataset_config(two_subsets)
    by_dir = {it.path.parent.name: it for it in scan.items}
    chars, style = by_dir["chars"].options, by_dir["style"].options
    assert (chars.keep_tokens, chars.flip_aug, chars.shuffle_caption) == (1, True, True)  # shuffle from [general]
    assert (style.keep_tokens, style.flip_aug, style.shuffle_caption) == (2, False, True)  # flip_aug from the run
    assert [(c.path.name, c.repeats, c.image_count) for c in scan.concepts] == [("chars", 3, 2), ("style", 1, 2)]

    dataset = TrainDataset(scan, resolution=64, min_reso=64, max_reso=128, seed=1)
    assert len(dataset) == 2 * 3 + 2 * 1
    flipped = {"chars": set(), "style": set()}
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            folder, tags = Path(sample["path"]).parent.name, sample["caption"].split(", ")
            kept = ["mychar"] if folder == "chars" else ["mystyle", "painted"]
            assert tags[: len(kept)] == kept  # each subset keeps its own number of leading tags in place
            flipped[folder].add(bool(sample["pixel_values"][0, :, 0].mean() > 0))  # first column white: flipped
    assert flipped == {"chars": {True, False}, "style": {False}}


def test_dataset_level_values_become_the_runs(two_subsets):
    cfg = dataset_settings(two_subsets)
    assert (cfg.resolution, cfg.train_batch_size) == ("64", 2)
    report = check_dataset(two_subsets, similar=False)  # train_data_dir empty: the config names the folders
    assert not any("ignored" in w for w in report.scan_warnings)
    given = two_subsets.model_copy(update={"train_data_dir": "/elsewhere"})
    assert scan_dataset_config(given).warnings == [
        f"train_data_dir ignored: dataset_config {two_subsets.dataset_config} names the image folders"]
    assert report.plan.per_epoch == 8 and report.plan.batch_size == 2 and report.plan.batches_per_epoch == 4


def test_a_reg_subset_is_balanced_against_its_dataset(tmp_path):
    for i in range(2):
        half_dark(tmp_path / "train" / f"t{i}.png", "mychar")
    for i in range(5):
        half_dark(tmp_path / "reg" / f"r{i}.png", None)
    config = write_config(tmp_path, """
[[datasets]]
  [[datasets.subsets]]
  image_dir = "train"
  num_repeats = 2
  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
  class_tokens = "person"
""")
    scan = scan_dataset_config(run_config(config))
    assert scan.num_train_images == 4 and scan.num_reg_images == 5
    assert {it.caption for it in scan.reg_items} == {"person"}  # class_tokens caption an uncaptioned image
    dataset = TrainDataset(scan, resolution=64, min_reso=64, max_reso=128)
    assert dataset.num_reg_samples == 4  # kohya: the first 4 reg images x 1 reach the 4 training samples

    facts = dataset_facts(dataset_settings(run_config(config)), scan)
    assert facts["num_reg_images"] == 5 and facts["dataset_dirs"] == {"train": {"n_repeats": 2, "img_count": 2}}
    [meta] = json.loads(json.dumps(facts["datasets"]))
    assert (meta["num_train_images"], meta["num_reg_images"], meta["resolution"]) == (4, 5, [64, 64])
    assert [(s["image_dir"], s["is_reg"], s["class_tokens"], s["num_repeats"]) for s in meta["subsets"]] == [
        ("train", False, None, 2), ("reg", True, "person", 1)]


def test_batches_come_from_one_dataset_at_a_time(tmp_path):
    for i in range(3):
        half_dark(tmp_path / "a" / f"a{i}.png", "a")
        half_dark(tmp_path / "b" / f"b{i}.png", "b")
    config = write_config(tmp_path, """
[[datasets]]
  [[datasets.subsets]]
  image_dir = "a"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "b"
""")
    dataset = TrainDataset(scan_dataset_config(run_config(config)), resolution=64, min_reso=64, max_reso=128)
    sampler = BucketBatchSampler(dataset.buckets, 2, seed=0, datasets=dataset.datasets)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    folders = [{Path(p).parent.name for p in batch["path"]} for batch in loader]
    assert len(folders) == 4 and all(len(f) == 1 for f in folders)  # ceil(3/2) per dataset, never mixed


@pytest.mark.parametrize(("text", "message"), [
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nflip_agu = true\n",
     r"\[\[datasets\]\] 1, \[\[datasets.subsets\]\] 1: unknown key 'flip_agu' \(did you mean 'flip_aug'\?\)"),
    ("[general]\nshufle_caption = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n",
     r"\[general\]: unknown key 'shufle_caption' \(did you mean 'shuffle_caption'\?\)"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nmetadata_file = 'm.json'\n",
     r"'metadata_file' is a kohya dataset option this trainer does not support yet"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nbatch_size = 2\n",
     r"'batch_size' does not belong in this table"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeats = '3'\n", r"num_repeats = '3': must be int"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nkeep_tokens = -1\n", r"keep_tokens = -1: "),
    ("[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n", r"image_dir is missing"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'nowhere'\n", r"image_dir nowhere: folder not found"),
    ("[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = 'a'\n[[datasets]]\nresolution = 96\n"
     "[[datasets.subsets]]\nimage_dir = 'a'\n", r"\[\[datasets\]\] 2: resolution = 96 differs from"),
    ("[datasets]\nimage_dir = 'a'\n", r"no \[\[datasets\]\] table"),
    ("[[datasets]]\n[[datasets.subsets]\n", r"not a valid TOML file"),
    ("[train]\nx = 1\n", r"top level: unknown key 'train'"),
])
def test_a_bad_dataset_config_is_one_line_naming_file_table_and_key(tmp_path, text, message):
    half_dark(tmp_path / "a" / "a0.png", "a")
    config = write_config(tmp_path, text)
    with pytest.raises(UserError, match=message) as err:
        scan_dataset_config(run_config(config))
    assert "\n" not in str(err.value) and str(config) in str(err.value)


def test_the_config_file_refuses_no_dataset_config_keys():
    from training.contract.config_io import config_from_dict

    kohya = {"dataset_config": "d.toml", "reg_data_dir": "reg", "prior_loss_weight": 0.5}
    cfg, _notes = config_from_dict(kohya, "k.toml")
    assert (cfg.dataset_config, cfg.reg_data_dir, cfg.prior_loss_weight) == ("d.toml", "reg", 0.5)
