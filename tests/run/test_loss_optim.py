"""The objective and the optimizer factory: min-SNR weights, v-prediction targets, optional optimizers."""

from __future__ import annotations

import builtins
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.models.conditioning import TextEmbeds
from training.run.loss import min_snr_weights, per_sample_loss, random_timesteps, sample_noise, target_for
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
    # The shift is noise_offset times a standard-normal draw per channel, taken after the noise itself.
    gen = torch.Generator().manual_seed(0)
    expected = torch.randn(latents.shape, generator=gen) + 0.5 * torch.randn((2, 4, 1, 1), generator=gen)
    assert torch.allclose(offset, expected, atol=1e-6)


class HalfUnet(torch.nn.Module):
    """A stand-in UNet whose prediction is known: half the noisy latents plus timestep / 1000."""

    def forward(self, noisy, timesteps, encoder_hidden_states):
        return SimpleNamespace(sample=0.5 * noisy + timesteps.view(-1, 1, 1, 1) / 1000)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_per_sample_loss_is_the_mse_to_the_target_weighted_by_min_snr(prediction_type, gamma):
    sched = scheduler(prediction_type)
    gen = torch.Generator().manual_seed(3)
    latents, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([5, 400, 950])
    text = TextEmbeds(torch.zeros(3, 77, 32))
    loss = per_sample_loss(HalfUnet(), sched, latents, text, noise, t, min_snr_gamma=gamma)

    alpha = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    prediction = 0.5 * noisy + t.view(-1, 1, 1, 1) / 1000
    target = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents if prediction_type == "v_prediction" else noise
    expected = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    if gamma:
        snr = (alpha / (1 - alpha)).flatten()
        expected = expected * torch.clamp(snr, max=gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    assert loss.shape == (3,) and loss.dtype == torch.float32
    assert torch.allclose(loss, expected, rtol=1e-4)


def test_timesteps_cover_the_whole_schedule():
    sched = scheduler("epsilon")
    t = random_timesteps(20000, sched, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert t.shape == (20000,) and t.dtype == torch.long
    assert t.min() == 0 and t.max() == sched.config.num_train_timesteps - 1


def params():
    return [{"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 1e-4},
            {"params": [torch.nn.Parameter(torch.zeros(4))], "lr": 2e-5}]


@pytest.mark.parametrize("name", ["AdamW", "AdamW8bit", "Prodigy", "Lion", "Adafactor"])
def test_every_optimizer_builds_and_keeps_per_part_learning_rates(name):
    optimizer = make_optimizer(TrainConfig(optimizer_type=name), params())
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 2e-5]


@pytest.mark.parametrize(("name", "weight_decay"), [
    ("AdamW", 1e-2), ("AdamW8bit", 1e-2), ("Prodigy", 1e-2), ("Lion", 1e-2), ("Adafactor", 0.0)])
def test_optimizers_use_kohyas_weight_decay(name, weight_decay):
    optimizer = make_optimizer(TrainConfig(optimizer_type=name), params())
    assert [g["weight_decay"] for g in optimizer.param_groups] == [weight_decay] * 2


def test_prodigy_warms_up_safely_with_bias_correction():
    group = make_optimizer(TrainConfig(optimizer_type="Prodigy"), params()).param_groups[0]
    assert group["safeguard_warmup"] is True and group["use_bias_correction"] is True


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
    assert warmup_steps(TrainConfig(lr_warmup_steps=1), 1000) == 1  # one step, not the whole run


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
