"""The objective and the optimizer factory: min-SNR weights, v-prediction targets, optional optimizers."""

from __future__ import annotations

import builtins

import pytest
import torch
from diffusers import DDPMScheduler

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.run.loss import min_snr_weights, sample_noise, target_for
from training.run.optim import make_optimizer, make_scheduler, warmup_steps


def scheduler(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type=prediction_type)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_paper(prediction_type):
    sched = scheduler(prediction_type)
    t = torch.tensor([1, 100, 500, 999])
    alpha = sched.alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    expected = torch.clamp(snr, max=5.0) / (snr + 1 if prediction_type == "v_prediction" else snr)
    assert torch.allclose(min_snr_weights(sched, t, 5.0), expected, rtol=1e-5)
    # Low-noise steps (huge SNR) are down-weighted; high-noise steps keep full weight for epsilon.
    w = min_snr_weights(sched, t, 5.0)
    assert w[0] < 0.1 and (prediction_type == "v_prediction" or w[-1] == pytest.approx(1.0))


def test_v_prediction_target_is_the_velocity():
    sched = scheduler("v_prediction")
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(target_for(sched, latents, noise, t), a * noise - s * latents, atol=1e-5)
    assert target_for(scheduler("epsilon"), latents, noise, t) is noise


def test_noise_offset_shifts_each_channel():
    latents = torch.zeros(2, 4, 32, 32)
    plain = sample_noise(latents, torch.Generator().manual_seed(0), 0.0)
    offset = sample_noise(latents, torch.Generator().manual_seed(0), 0.5)
    shift = (offset - plain)[:, :, :1, :1]
    assert torch.allclose(offset - plain, shift.expand_as(plain), atol=1e-6) and shift.abs().max() > 0.05


def params():
    return [{"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 1e-4},
            {"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 2e-5}]


@pytest.mark.parametrize("name", ["AdamW", "AdamW8bit", "Prodigy", "Lion", "Adafactor"])
def test_every_optimizer_builds_and_keeps_per_part_learning_rates(name):
    optimizer = make_optimizer(TrainConfig(optimizer_type=name), params())
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 2e-5]


def test_missing_optional_package_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_prodigy(name, *args, **kwargs):
        if name == "prodigyopt":
            raise ImportError("No module named 'prodigyopt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prodigy)
    with pytest.raises(UserError, match=r"optimizer_type = 'Prodigy' needs the 'prodigyopt' package.*\[optim\]"):
        make_optimizer(TrainConfig(optimizer_type="Prodigy"), params())


def test_warmup_accepts_steps_or_a_share():
    assert warmup_steps(TrainConfig(lr_warmup_steps=0.05), 1000) == 50
    assert warmup_steps(TrainConfig(lr_warmup_steps=30), 1000) == 30


def test_cosine_schedule_decays_to_zero_after_warmup():
    cfg = TrainConfig(lr_scheduler="cosine", lr_warmup_steps=10)
    optimizer = make_optimizer(cfg, params())
    sched = make_scheduler(cfg, optimizer, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        optimizer.step()
        sched.step()
    assert lrs[0] == 0 and max(lrs) == pytest.approx(1e-4) and lrs[-1] < 1e-6
