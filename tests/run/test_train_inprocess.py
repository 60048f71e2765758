"""Training behaviour checked in-process on tiny models: it learns, it stops cleanly on NaN, v-prediction works."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import make_image_dataset

import training.run.loop as loop_module
from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.contract.events import read_events
from training.run.runner import TrainingFailed, run


def config(model: Path, data: Path, out: Path, **extra) -> TrainConfig:
    values = {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "network_dim": 8, "network_alpha": 8.0,
        "learning_rate": 2e-3, "lr_scheduler": "constant", "max_train_steps": 10, "mixed_precision": "no",
        "seed": 5, "network_train_unet_only": True,
    } | extra
    return TrainConfig(**values)


def val_losses(out: Path) -> list[float]:
    return [e["loss"] for e in read_events(out) if e["event"] == "val"]


def test_validation_loss_falls_when_overfitting_a_few_images(tmp_path, tiny_sd1):
    data = make_image_dataset(tmp_path / "data", {"1_red": 2})
    out = tmp_path / "run"
    cfg = config(tiny_sd1, data, out, max_train_steps=80, validation_every_n_steps=20, learning_rate=5e-3)
    assert run(cfg) == "done"
    losses = val_losses(out)
    assert len(losses) == 5  # step 0 and every 20 steps
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_and_keeps_the_last_good_lora(tmp_path, tiny_sd1, dataset_dir, monkeypatch, bad):
    real_loss = loop_module.per_sample_loss
    calls = {"n": 0}

    def loss_that_goes_bad(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * bad if calls["n"] > 12 else loss

    monkeypatch.setattr(loop_module, "per_sample_loss", loss_that_goes_bad)
    out = tmp_path / "run"
    with pytest.raises(TrainingFailed, match="NaN"):
        run(config(tiny_sd1, dataset_dir, out, max_train_steps=40, validation_every_n_steps=0))
    error = read_events(out)[-1]
    assert error["event"] == "error" and error["code"] == "non_finite_loss" and error["step"] == 13
    assert "img_" in error["msg"]  # names the batch's files
    saved = Path(error["last_checkpoint"])
    assert saved.name == "lora-step00000012.safetensors"  # last read-back before the NaN (end of epoch 2)
    assert all(torch.isfinite(t.float()).all() for t in load_file(str(saved)).values())
    assert not (out / "lora.safetensors").exists()  # no "final" LoRA pretends the run finished


def test_v_prediction_with_min_snr_trains_on_sd2(tmp_path, tiny_sd2v, dataset_dir):
    """SD2 768-v style model with most options on at once: min-SNR (v form), noise offset, text encoder training,
    caption shuffle/dropout, flips, gradient checkpointing, a held-out validation image and per-epoch saves."""
    out = tmp_path / "run"
    cfg = config(tiny_sd2v, dataset_dir, out, min_snr_gamma=5.0, noise_offset=0.05, network_train_unet_only=False,
                 text_encoder_lr=1e-4, shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.2, flip_aug=True,
                 gradient_checkpointing=True, validation_split=0.34, save_every_n_epochs=1)
    assert run(cfg) == "done"
    events = read_events(out)
    start = next(e for e in events if e["event"] == "start")
    assert start["family"] == "sd2-v"  # v-prediction read from the model folder's scheduler
    assert start["dataset"]["validation"] == "held-out" and start["steps_per_epoch"] == 4  # 2 images x 2 repeats
    assert [e["path"].rsplit("/", 1)[-1] for e in events if e["event"] == "checkpoint"] == [
        "lora-000001.safetensors", "lora-000002.safetensors", "lora.safetensors"]
    steps = [e for e in events if e["event"] == "step"]
    assert all(math.isfinite(e["loss"]) for e in steps)
    assert set(steps[-1]["lr"]) == {"unet", "text_encoder"} and steps[-1]["lr"]["text_encoder"] == 1e-4
    lora = load_file(str(out / "lora.safetensors"))
    assert any(k.startswith("lora_te_") for k in lora)
    checkpoint = next(e for e in events if e["event"] == "checkpoint")
    assert checkpoint["check"].split()[0] == checkpoint["check"].split()[2]


def test_network_weights_continue_from_an_earlier_lora(tmp_path, tiny_sd1, dataset_dir):
    first = tmp_path / "first"
    run(config(tiny_sd1, dataset_dir, first, max_train_steps=20, validation_every_n_steps=20,
               save_precision="float"))
    second = tmp_path / "second"
    run(config(tiny_sd1, dataset_dir, second, max_train_steps=1, validation_every_n_steps=1,
               network_weights=str(first / "lora.safetensors")))
    # The second run starts exactly where the first ended: same validation loss before its first step.
    assert val_losses(second)[0] == pytest.approx(val_losses(first)[-1], rel=1e-5)

    with pytest.raises(UserError, match=r"rank mismatch.*network_dim is 4"):
        run(config(tiny_sd1, dataset_dir, tmp_path / "third", network_dim=4,
                   network_weights=str(first / "lora.safetensors")))


def test_without_latent_cache_images_load_in_worker_processes(tmp_path, tiny_sd1, dataset_dir):
    out = tmp_path / "run"
    cfg = config(tiny_sd1, dataset_dir, out, cache_latents=False, max_data_loader_n_workers=2, flip_aug=True,
                 max_train_steps=6, train_batch_size=2)
    assert run(cfg) == "done"
    steps = [e for e in read_events(out) if e["event"] == "step"]
    assert len(steps) == 6 and all(math.isfinite(e["loss"]) for e in steps)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a user without a CUDA GPU gets")
def test_default_bf16_on_a_cpu_trains_in_float32_and_says_so(tmp_path, tiny_sd1, dataset_dir):
    """bf16 is the default precision; on a CPU the run falls back to float32 (bf16 autocast on most CPUs is slower
    and only a pipeline check runs there), warns once, and the LoRA states the precision it really trained in."""
    out = tmp_path / "run"
    assert run(config(tiny_sd1, dataset_dir, out, mixed_precision="bf16", max_train_steps=4)) == "done"
    events = read_events(out)
    warnings = [e for e in events if e["event"] == "warning" and e["code"] == "no_gpu"]
    assert len(warnings) == 1 and "float32" in warnings[0]["msg"] and "instead of bf16" in warnings[0]["msg"]
    assert next(e for e in events if e["event"] == "start")["config"]["mixed_precision"] == "bf16"  # the choice kept
    checkpoint = [e for e in events if e["event"] == "checkpoint"][-1]
    matched, _, total = checkpoint["check"].split()[:3]
    assert matched == total and events[-1]["event"] == "done"
    with safe_open(str(out / "lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == "no"
    assert all(torch.isfinite(t.float()).all() for t in load_file(str(out / "lora.safetensors")).values())
