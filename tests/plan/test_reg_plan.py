"""The step plan counts regularisation images as the trainer does: an epoch holds the training samples plus as many
regularisation samples (kohya's balance), so with them an epoch is twice as long."""

from __future__ import annotations

import math

from tiny_models import make_image_dataset

from training.contract.config import TrainConfig
from training.data.dataset_config import scan_run_dataset
from training.data.sampler import BucketBatchSampler
from training.plan.dataset_check import check_dataset
from training.plan.schedule import Schedule
from training.run.prepare import make_dataset


def test_the_step_plan_counts_reg_images_like_the_trainer(tmp_path):
    train = make_image_dataset(tmp_path / "train", {"5_cat": 3})  # 15 training samples per epoch
    reg = make_image_dataset(tmp_path / "reg", {"1_person": 4}, captions=False)  # balanced up to 15
    cfg = TrainConfig(train_data_dir=str(train), reg_data_dir=str(reg), resolution="64", min_bucket_reso=64,
                      max_bucket_reso=128, train_batch_size=4, max_train_epochs=2, validation_every_n_steps=0)
    plan = check_dataset(cfg, similar=False).plan
    assert (plan.per_epoch, plan.reg_per_epoch, plan.reg_images) == (15 + 15, 15, 4)
    assert plan.batches_per_epoch == math.ceil(30 / 4) and plan.total_steps == 2 * math.ceil(30 / 4)
    assert "15 training images + 15 regularisation images (of 4" in plan.lines()[0]
    without = check_dataset(cfg.model_copy(update={"reg_data_dir": ""}), similar=False).plan
    assert without.batches_per_epoch == math.ceil(15 / 4)

    dataset = make_dataset(cfg, scan_run_dataset(cfg))  # what the run builds
    sampler = BucketBatchSampler(dataset.buckets, cfg.train_batch_size, cfg.seed, datasets=dataset.datasets)
    assert Schedule.build(cfg, len(sampler)).total_steps == plan.total_steps
    assert len(dataset) == plan.per_epoch
