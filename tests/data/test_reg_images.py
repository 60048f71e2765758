"""Regularisation images (reg_data_dir, prior_loss_weight): kohya's balance against the training images in every
epoch, batches that mix both, each regularisation sample's loss weighted, and what the LoRA file records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from tiny_models import make_image_dataset

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.data.dataset import TrainDataset, collate
from training.data.folder import balance_reg, scan_dataset
from training.data.sampler import BucketBatchSampler
from training.run.loop import weighted_mean


def kohya_reg_repeats(train_samples: int, reg_repeats: list[int]) -> list[int]:
    """sd-scripts' rule, written out: whole reg images at their folder's repeats until the training count is
    reached (the rest unused); if they all fall short, +1 repeat to each in turn until the counts are equal."""
    used, total = [], 0
    for r in reg_repeats:
        if total >= train_samples:
            break
        used.append(r)
        total += r
    extra = train_samples - total
    if extra > 0:
        n = len(used)
        used = [r + extra // n + (1 if i < extra % n else 0) for i, r in enumerate(used)]
    return used


def epoch_batches(dataset: TrainDataset, batch_size: int) -> list[dict]:
    sampler = BucketBatchSampler(dataset.buckets, batch_size, seed=3, datasets=dataset.datasets)
    sampler.begin_epoch(0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    return list(loader)


def test_too_few_reg_images_are_repeated_to_match_the_training_images(tmp_path):
    train = make_image_dataset(tmp_path / "train", {"5_cat": 3})  # 3 images x 5 repeats = 15 training samples
    reg = make_image_dataset(tmp_path / "reg", {"1_person": 4}, captions=False)  # 4 x 1 = 4, short of 15
    scan = scan_dataset(train, reg_data_dir=reg)
    assert scan.num_train_images == 15 and scan.num_reg_images == 4
    expected = kohya_reg_repeats(15, [1, 1, 1, 1])
    assert expected == [4, 4, 4, 3]  # 4 first, then 11 more round the four images

    dataset = TrainDataset(scan, resolution=64, min_reso=64, max_reso=128, prior_loss_weight=0.5)
    batches = epoch_batches(dataset, batch_size=2)
    seen = Counter((path, reg) for b in batches for path, reg in zip(b["path"], b["is_reg"], strict=True))
    reg_seen = sorted(((Path(p).name, n) for (p, is_reg), n in seen.items() if is_reg))
    assert reg_seen == [(f"img_{i}.png", n) for i, n in enumerate(expected)]
    assert sum(n for (_, is_reg), n in seen.items() if not is_reg) == 15
    # The class token (the folder name after the repeats) captions a reg image without a caption file.
    assert {c for b in batches for c, r in zip(b["caption"], b["is_reg"], strict=True) if r} == {"person"}
    # Both kinds share the buckets, so batches mix them; each reg sample weighs prior_loss_weight.
    assert any(set(b["is_reg"]) == {True, False} for b in batches)
    for b in batches:
        assert b["loss_weight"].tolist() == [0.5 if r else 1.0 for r in b["is_reg"]]


def test_surplus_reg_images_are_left_out(tmp_path):
    train = make_image_dataset(tmp_path / "train", {"1_cat": 3})  # 3 training samples
    reg = make_image_dataset(tmp_path / "reg", {"2_person": 10}, captions=False)  # 20 reg samples available
    scan = scan_dataset(train, reg_data_dir=reg)
    used = balance_reg(scan.items, scan.reg_items)
    assert [it.repeats for it in used] == kohya_reg_repeats(3, [2] * 10) == [2, 2]  # 4 samples, 8 images unused
    assert len(TrainDataset(scan, resolution=64, min_reso=64, max_reso=128)) == 3 + 4


def test_a_reg_folder_without_images_is_one_line(tmp_path):
    train = make_image_dataset(tmp_path / "train", {"1_cat": 1})
    (tmp_path / "reg" / "1_person").mkdir(parents=True)
    with pytest.raises(UserError, match=r"reg_data_dir: no images found in .*reg"):
        scan_dataset(train, reg_data_dir=tmp_path / "reg")
    with pytest.raises(UserError, match=r"reg_data_dir: folder .*missing does not exist"):
        scan_dataset(train, reg_data_dir=tmp_path / "missing")


def test_the_batch_loss_weighs_each_reg_sample_by_prior_loss_weight():
    losses, weights = torch.tensor([0.2, 0.6, 0.9]), torch.tensor([1.0, 0.25, 1.0])
    # kohya: mean over the batch of loss_i * weight_i (the weights are not normalised)
    assert weighted_mean(losses, weights).item() == pytest.approx((0.2 + 0.25 * 0.6 + 0.9) / 3)
    assert weighted_mean(losses, None).item() == pytest.approx((0.2 + 0.6 + 0.9) / 3)


def test_a_run_weights_reg_samples_and_records_them(tmp_path, tiny_sd1):
    """One tiny run: every step's loss is the formula over its batch, and the LoRA names the reg folders."""
    import training.run.loop as loop_module
    from training.run.runner import run

    train = make_image_dataset(tmp_path / "train", {"2_red": 2})  # 4 training samples
    reg = make_image_dataset(tmp_path / "reg", {"1_shape": 3}, captions=False)  # 3 -> balanced to 4
    weight = 0.25
    cfg = TrainConfig(pretrained_model_name_or_path=str(tiny_sd1), train_data_dir=str(train), reg_data_dir=str(reg),
                      prior_loss_weight=weight, output_dir=str(tmp_path / "run"), resolution="64",
                      min_bucket_reso=64, max_bucket_reso=128, network_dim=4, network_alpha=2.0,
                      lr_scheduler="constant", mixed_precision="no", seed=5, network_train_unet_only=True,
                      validation_every_n_steps=0, train_batch_size=4, max_train_epochs=1)
    seen: list[tuple[list[bool], torch.Tensor, float]] = []
    real_loss, real_step = loop_module.per_sample_loss, loop_module.train_step
    last: dict[str, torch.Tensor] = {}

    def loss(*args, **kwargs):
        last["losses"] = real_loss(*args, **kwargs)
        return last["losses"]

    def step(parts, batch):
        out = real_step(parts, batch)
        seen.append((list(batch["is_reg"]), last["losses"].detach().clone(), out.item()))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_module, "per_sample_loss", loss)
        mp.setattr(loop_module, "train_step", step)
        assert run(cfg, run_dir=tmp_path / "run") == "done"

    assert len(seen) == 2  # (4 training + 4 reg samples) / batch 4: an epoch with reg is twice as long
    assert sum(r for is_reg, _, _ in seen for r in is_reg) == 4
    for is_reg, losses, step_loss in seen:
        expected = sum(v * (weight if r else 1.0) for v, r in zip(losses.tolist(), is_reg, strict=True)) / len(is_reg)
        assert step_loss == pytest.approx(expected, rel=1e-5)

    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "lora.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_reg_images"] == "3" and meta["ss_num_train_images"] == "4"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_shape": {"n_repeats": 1, "img_count": 3}}
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_red": {"n_repeats": 2, "img_count": 2}}
    assert meta["ss_prior_loss_weight"] == "0.25"
    assert meta["ss_num_batches_per_epoch"] == "2"
