"""The dry run replays a real run's schedule: the same steps, validations, samples and saves, in the same order."""

from __future__ import annotations

from pathlib import Path

from tiny_models import make_image_dataset

from training.contract.config import TrainConfig
from training.contract.events import Checkpoint, read_events
from training.run.dry_run import STEP_SECONDS_ENV, SYNTHETIC_IMAGES, dry_run
from training.run.runner import run

SCHEDULED = ("step", "val", "sample", "checkpoint")


def points(run_dir: Path) -> list[tuple[str, int]]:
    return [(e["event"], e["step"]) for e in read_events(run_dir) if e["event"] in SCHEDULED]


def test_dry_run_and_training_validate_sample_and_save_at_the_same_steps(tmp_path, tiny_sd1, monkeypatch):
    monkeypatch.setenv(STEP_SECONDS_ENV, "0")
    # The dry run pretends SYNTHETIC_IMAGES images in one bucket: the same number of batches per epoch.
    data = make_image_dataset(tmp_path / "data", {f"{SYNTHETIC_IMAGES // 2}_red": 2})
    cfg = TrainConfig(pretrained_model_name_or_path=str(tiny_sd1), train_data_dir=str(data), resolution="64",
                      min_bucket_reso=64, max_bucket_reso=128, network_dim=4, network_alpha=4.0, mixed_precision="no",
                      seed=5, network_train_unet_only=True, train_batch_size=4, max_train_epochs=2,
                      validation_split=0, validation_every_n_steps=4, save_every_n_steps=5, save_every_n_epochs=1,
                      sample_every_n_steps=7, sample_every_n_epochs=1, sample_prompts="a red circle --s 2")
    real, dry = tmp_path / "real", tmp_path / "dry"
    assert run(cfg.model_copy(update={"output_dir": str(real)})) == "done"
    assert dry_run(cfg.model_copy(update={"output_dir": str(dry)})) == "done"

    # validation every 4 steps and at the end; after step 5, which ends epoch 1 (of 5 steps), the per-step save and
    # the per-epoch one, then the epoch's sample; a sample at step 7; after step 10 the epoch's sample, the last
    # validation and the final LoRA (no per-step or per-epoch file at the end)
    expected = [("val", 0), ("step", 1), ("step", 2), ("step", 3), ("step", 4), ("val", 4), ("step", 5),
                ("checkpoint", 5), ("checkpoint", 5), ("sample", 5), ("step", 6), ("step", 7), ("sample", 7),
                ("step", 8), ("val", 8), ("step", 9), ("step", 10), ("sample", 10), ("val", 10), ("checkpoint", 10)]
    assert points(dry) == expected
    assert points(real) == expected
    # a save's epoch is the epochs completed by then, in both: the step save at step 5 ends epoch 1 too
    saves = {name: [(e.step, e.epoch) for e in read_events(name) if isinstance(e, Checkpoint)] for name in (real, dry)}
    assert saves[real] == saves[dry] == [(5, 1), (5, 1), (10, 2)]
    start = {name: next(e for e in read_events(name) if e["event"] == "start") for name in (real, dry)}
    assert {k: start[real][k] for k in ("total_steps", "total_epochs", "steps_per_epoch")} == {
        k: start[dry][k] for k in ("total_steps", "total_epochs", "steps_per_epoch")}
