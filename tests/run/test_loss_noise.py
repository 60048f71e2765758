"""The loss and noise options (kohya's loss_type, huber_c/huber_schedule, debiased estimation, v-pred scaling,
zero_terminal_snr, input perturbation, multires and adaptive noise, timestep bounds, masked loss), each checked
against its formula written out here on tiny tensors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from training.contract.config import TrainConfig
from training.contract.config_io import config_from_dict
from training.contract.errors import UserError
from training.lora_files.export import build_metadata
from training.models.conditioning import TextEmbeds
from training.models.families import FAMILIES
from training.models.loading import with_zero_terminal_snr
from training.plan.preflight import preflight
from training.run.loss import (
    PLAIN_LOSS,
    LossOptions,
    NoiseOptions,
    input_noise,
    per_sample_loss,
    prediction_advice,
    random_timesteps,
    sample_noise,
)

T = torch.tensor([0, 5, 400, 950, 999])


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type=prediction_type)


class RecordingUnet(torch.nn.Module):
    """A stand-in UNet with a known prediction (half its input plus timestep / 1000) that keeps its last input."""

    def forward(self, noisy, timesteps, encoder_hidden_states):
        self.seen = noisy
        return SimpleNamespace(sample=0.5 * noisy + timesteps.view(-1, 1, 1, 1) / 1000)


def tensors(seed: int = 3, batch: int = len(T)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 4, 8, 8, generator=gen)


def run_loss(sched: DDPMScheduler, options: LossOptions = PLAIN_LOSS, **kwargs) -> torch.Tensor:
    latents, noise = tensors()
    text = TextEmbeds(torch.zeros(len(T), 77, 32))
    return per_sample_loss(RecordingUnet(), sched, latents, text, noise, T, options=options, **kwargs)


def error(sched: DDPMScheduler) -> torch.Tensor:
    """prediction - target for run_loss's batch, computed here from the DDPM formulas."""
    latents, noise = tensors()
    a = sched.alphas_cumprod[T].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    prediction = 0.5 * noisy + T.view(-1, 1, 1, 1) / 1000
    target = a.sqrt() * noise - (1 - a).sqrt() * latents if sched.config.prediction_type == "v_prediction" else noise
    return prediction - target


def snr(sched: DDPMScheduler) -> torch.Tensor:
    a = sched.alphas_cumprod[T].double()
    return (a / (1 - a)).float()


# --- loss_type, huber_c, huber_schedule ----------------------------------------------------------------------------

def huber_c_expected(schedule: str, c: float, scale: float) -> torch.Tensor:
    if schedule == "snr":  # (1 - c) / (1 + sigma)^2 + c, sigma = sqrt((1 - alpha_bar) / alpha_bar)
        sigma = (1 / snr(scheduler())).sqrt()
        return (1 - c) / (1 + sigma) ** 2 + c
    if schedule == "exponential":  # from scale at t = 0 to scale * c at t = 1000
        return scale * torch.exp(math.log(c) * T.float() / 1000)
    return torch.full((len(T),), scale * c)


@pytest.mark.parametrize("schedule", ["snr", "exponential", "constant"])
@pytest.mark.parametrize("loss_type", ["huber", "smooth_l1"])
def test_huber_and_smooth_l1_follow_their_formula_with_huber_c_per_timestep(loss_type, schedule):
    sched, c, scale = scheduler(), 0.2, 1.5
    d = error(sched)
    hc = huber_c_expected(schedule, c, scale).view(-1, 1, 1, 1)
    smooth = 2 * (torch.sqrt(d**2 + hc**2) - hc)
    expected = (hc * smooth if loss_type == "huber" else smooth).mean(dim=(1, 2, 3))
    got = run_loss(sched, LossOptions(loss_type=loss_type, huber_c=c, huber_schedule=schedule, huber_scale=scale))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    l2 = run_loss(sched)
    torch.testing.assert_close(l2, (d**2).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got, l2)


def test_l1_is_the_mean_absolute_error():
    sched = scheduler()
    torch.testing.assert_close(run_loss(sched, LossOptions(loss_type="l1")), error(sched).abs().mean(dim=(1, 2, 3)))


def test_the_snr_schedule_gives_large_huber_c_at_low_noise_and_huber_c_at_high_noise():
    hc = huber_c_expected("snr", 0.1, 1.0)
    assert hc[0] > 0.9 and hc[-1] == pytest.approx(0.1, abs=0.01)


# --- SNR weights ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_debiased_estimation_weights_by_one_over_sqrt_snr_capped_at_1000(prediction_type):
    sched = scheduler(prediction_type)
    s = torch.clamp(snr(sched), max=1000)  # kohya caps SNR at 1000; t = 0 has about 1175 in this schedule
    assert snr(sched)[0] > 1000
    weight = 1 / (s + 1) if prediction_type == "v_prediction" else 1 / s.sqrt()
    plain = run_loss(sched)
    got = run_loss(sched, LossOptions(debiased_estimation_loss=True))
    torch.testing.assert_close(got, plain * weight, rtol=1e-5, atol=1e-8)


def test_scale_v_pred_loss_like_noise_pred_weights_by_snr_over_snr_plus_one():
    sched = scheduler("v_prediction")
    s = torch.clamp(snr(sched), max=1000)
    got = run_loss(sched, LossOptions(scale_v_pred_loss_like_noise_pred=True))
    torch.testing.assert_close(got, run_loss(sched) * s / (s + 1), rtol=1e-5, atol=1e-8)


def test_v_pred_like_loss_adds_the_loss_scaled_like_v_prediction():
    sched = scheduler()
    s = torch.clamp(snr(sched), max=1000)
    got = run_loss(sched, LossOptions(v_pred_like_loss=0.3))
    plain = run_loss(sched)
    torch.testing.assert_close(got, plain + plain * (s + 1) / s * 0.3, rtol=1e-5, atol=1e-8)


def test_v_prediction_options_are_refused_on_the_wrong_kind_of_model():
    with pytest.raises(UserError, match="scale_v_pred_loss_like_noise_pred is for v-prediction models"):
        prediction_advice(TrainConfig(scale_v_pred_loss_like_noise_pred=True), v_prediction=False)
    with pytest.raises(UserError, match=r"v_pred_like_loss .* v-prediction already"):
        prediction_advice(TrainConfig(v_pred_like_loss=0.1), v_prediction=True)
    assert prediction_advice(TrainConfig(scale_v_pred_loss_like_noise_pred=True), v_prediction=True) == []


# --- zero_terminal_snr ------------------------------------------------------------------------------------------------

def test_zero_terminal_snr_makes_the_last_timestep_pure_noise_and_keeps_the_first():
    sched = scheduler("v_prediction")
    rescaled = with_zero_terminal_snr(sched)
    assert rescaled.alphas_cumprod[-1] == 0 and sched.alphas_cumprod[-1] > 0
    # The rescale keeps sqrt(alpha_bar) at t = 0 and shifts/scales it linearly to 0 at the end.
    torch.testing.assert_close(rescaled.alphas_cumprod[0], sched.alphas_cumprod[0])
    old = sched.alphas_cumprod.double().sqrt()
    expected = ((old - old[-1]) * old[0] / (old[0] - old[-1])) ** 2
    torch.testing.assert_close(rescaled.alphas_cumprod.double(), expected, rtol=1e-4, atol=1e-7)
    assert rescaled.config.prediction_type == "v_prediction"


def test_zero_terminal_snr_keeps_every_loss_weight_finite_at_the_last_timestep():
    """The weights read the schedule before the rescale, as sd-scripts does (its SNR table predates the rescale):
    the rescaled SNR at t = 999 is 0, where 1/sqrt(SNR) would be infinite."""
    base, rescaled = scheduler(), with_zero_terminal_snr(scheduler())
    options = LossOptions(debiased_estimation_loss=True, v_pred_like_loss=0.1, loss_type="huber")
    loss = run_loss(rescaled, options, min_snr_gamma=5.0)
    assert torch.isfinite(loss).all()
    s = torch.clamp(snr(base), max=1000)
    plain = run_loss(rescaled, LossOptions(loss_type="huber"))
    weight = torch.clamp(snr(base), max=5.0) / snr(base)
    expected = plain * weight
    expected = (expected + expected * (s + 1) / s * 0.1) / s.sqrt()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-8)


def test_zero_terminal_snr_on_an_epsilon_model_says_it_needs_v_prediction():
    notes = prediction_advice(TrainConfig(zero_terminal_snr=True), v_prediction=False)
    assert [code for code, _ in notes] == ["zero_terminal_snr"]
    assert "only a v-prediction model can learn" in notes[0][1] and "v_parameterization = true" in notes[0][1]
    assert prediction_advice(TrainConfig(zero_terminal_snr=True), v_prediction=True) == []


# --- noise ------------------------------------------------------------------------------------------------------------

def test_input_perturbation_changes_the_unet_input_but_not_the_target():
    sched, gamma = scheduler(), 0.1
    latents, noise = tensors()
    gen = torch.Generator().manual_seed(9)
    perturbed = input_noise(noise, gen, NoiseOptions(ip_noise_gamma=gamma))
    extra = torch.randn(noise.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(perturbed, noise + gamma * extra)
    unet = RecordingUnet()
    text = TextEmbeds(torch.zeros(len(T), 77, 32))
    loss = per_sample_loss(unet, sched, latents, text, noise, T, noisy_with=perturbed)
    a = sched.alphas_cumprod[T].view(-1, 1, 1, 1)
    torch.testing.assert_close(unet.seen, a.sqrt() * latents + (1 - a).sqrt() * (noise + gamma * extra))
    prediction = 0.5 * unet.seen + T.view(-1, 1, 1, 1) / 1000
    torch.testing.assert_close(loss, ((prediction - noise) ** 2).mean(dim=(1, 2, 3)))  # the target is the noise
    assert input_noise(noise, gen, NoiseOptions()) is noise


def test_input_perturbation_random_strength_is_uniform_below_gamma():
    noise = torch.zeros(2, 4, 8, 8)
    gen = torch.Generator().manual_seed(4)
    perturbed = input_noise(noise, gen, NoiseOptions(ip_noise_gamma=0.2, ip_noise_gamma_random_strength=True))
    replay = torch.Generator().manual_seed(4)
    strength = torch.rand((1,), generator=replay) * 0.2
    torch.testing.assert_close(perturbed, strength * torch.randn(noise.shape, generator=replay))
    assert 0 < strength.item() < 0.2


def test_noise_offset_random_strength_and_adaptive_noise_scale():
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.5
    options = NoiseOptions(noise_offset=0.1, noise_offset_random_strength=True, adaptive_noise_scale=0.05)
    got = sample_noise(latents, torch.Generator().manual_seed(2), 0.1, options)
    replay = torch.Generator().manual_seed(2)
    base = torch.randn(latents.shape, generator=replay)
    strength = torch.rand((1,), generator=replay) * 0.1
    strength = torch.clamp(strength + 0.05 * latents.mean(dim=(2, 3), keepdim=True).abs(), min=0)
    expected = base + strength * torch.randn((2, 4, 1, 1), generator=replay)
    torch.testing.assert_close(got, expected)


def multires_expected(shape, seed: int, cpu_seed: int, iterations: int, discount: float):
    """Level i: Gaussian noise at (H, W) / r**i, r uniform in [2, 4) from the CPU RNG, bilinearly upsampled, times
    discount**i, added to the base noise; stop after a level one pixel high or wide; scale to unit std."""
    torch.manual_seed(cpu_seed)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=gen)
    b, c, h, w = shape
    sizes = []
    for i in range(iterations):
        r = 2 + 2 * torch.rand(()).item()
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        sizes.append((hn, wn))
        level = torch.randn((b, c, hn, wn), generator=gen)
        noise = noise + torch.nn.functional.interpolate(level, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std(), sizes


def test_multires_noise_adds_coarser_levels_and_keeps_unit_variance():
    shape = (2, 4, 64, 64)
    torch.manual_seed(11)
    got = sample_noise(torch.zeros(shape), torch.Generator().manual_seed(5), 0.0,
                       NoiseOptions(multires_noise_iterations=6, multires_noise_discount=0.3))
    expected, sizes = multires_expected(shape, 5, 11, 6, 0.3)
    torch.testing.assert_close(got, expected)
    # Level i is 64 / r**i with r in [2, 4): between 64 / 4**i and 64 / 2**i; the loop ends at 1 pixel or level 6.
    assert sizes[0] == (64, 64)
    assert all(max(1, int(64 / 4**i)) <= h <= 64 / 2**i and h == w for i, (h, w) in enumerate(sizes))
    assert sizes[-1][0] == 1 or len(sizes) == 6
    assert got.std().item() == pytest.approx(1.0, abs=1e-4)
    # Low frequencies (seen best with a strong discount): neighbouring pixels correlate where white noise does not,
    # and channel means spread wider.
    strong = sample_noise(torch.zeros(shape), torch.Generator().manual_seed(5), 0.0,
                          NoiseOptions(multires_noise_iterations=6, multires_noise_discount=0.8))
    white = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    assert neighbour_correlation(strong) > 0.2 and abs(neighbour_correlation(white)) < 0.05
    assert strong.mean(dim=(2, 3)).std() > 3 * white.mean(dim=(2, 3)).std()


def neighbour_correlation(x: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1].item()


def test_timesteps_stay_within_min_and_max_timestep():
    sched, gen = scheduler(), torch.Generator().manual_seed(0)
    t = random_timesteps(5000, sched, gen, torch.device("cpu"), NoiseOptions(min_timestep=200, max_timestep=300))
    assert t.min().item() == 200 and t.max().item() == 299  # max_timestep is exclusive, as in sd-scripts
    only_low = random_timesteps(5000, sched, gen, torch.device("cpu"), NoiseOptions(max_timestep=10))
    assert set(only_low.tolist()) == set(range(10))
    equal = random_timesteps(4, sched, gen, torch.device("cpu"), NoiseOptions(min_timestep=500, max_timestep=500))
    assert equal.tolist() == [500] * 4


# --- masked loss ------------------------------------------------------------------------------------------------------

def test_masked_loss_of_a_half_masked_image_is_the_loss_of_the_unmasked_half():
    """kohya's rule: the element loss times the mask, averaged over every element (the masked-out half adds 0)."""
    sched = scheduler()
    mask = torch.zeros(len(T), 64, 64)
    mask[:, :, :32] = 1  # left half learned, at image size: the loss averages it down to the 8x8 latent
    got = run_loss(sched, mask=mask)
    squared = error(sched) ** 2
    torch.testing.assert_close(got, squared[..., :4].sum(dim=(1, 2, 3)) / squared[0].numel())
    torch.testing.assert_close(got, run_loss(sched, mask=mask[:, ::8, ::8].contiguous()))  # latent-size mask alike


# --- the config -------------------------------------------------------------------------------------------------------

def test_a_kohya_file_with_the_loss_and_noise_keys_loads(tmp_path):
    cfg, _ = config_from_dict({"loss_type": "smooth_l1", "huber_c": 0.2, "huber_schedule": "exponential",
                            "debiased_estimation_loss": True, "zero_terminal_snr": True, "ip_noise_gamma": 0.1,
                            "multires_noise_iterations": 6, "multires_noise_discount": 0.3, "noise_offset": 0.05,
                            "adaptive_noise_scale": 0.01, "min_timestep": 100, "max_timestep": 900,
                            "masked_loss": True, "alpha_mask": True, "v_pred_like_loss": 0.2,
                            "scale_v_pred_loss_like_noise_pred": False})
    assert (cfg.loss_type, cfg.huber_schedule, cfg.min_timestep) == ("smooth_l1", "exponential", 100)


@pytest.mark.parametrize(("values", "message"), [
    ({"min_timestep": 600, "max_timestep": 500}, r"min_timestep \(600\) must not exceed max_timestep \(500\)"),
    ({"masked_loss": True}, "masked_loss needs masks"),
])
def test_inconsistent_loss_settings_are_refused(values, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(values)


def test_adaptive_noise_scale_without_noise_offset_is_refused_before_loading(tmp_path):
    cfg = TrainConfig(pretrained_model_name_or_path=str(tmp_path), train_data_dir=str(tmp_path),
                      output_dir=str(tmp_path / "out"), adaptive_noise_scale=0.02)
    with pytest.raises(UserError, match="adaptive_noise_scale adds to noise_offset"):
        preflight(cfg)


def test_the_lora_metadata_records_the_loss_and_noise_settings_as_sd_scripts_does():
    cfg = TrainConfig(loss_type="huber", huber_c=0.2, huber_schedule="constant", debiased_estimation_loss=True,
                      ip_noise_gamma=0.1, zero_terminal_snr=True, multires_noise_iterations=6, noise_offset=0.05,
                      adaptive_noise_scale=0.01, min_timestep=100).model_dump()
    meta = build_metadata(cfg, FAMILIES["sd1"], {})
    assert (meta["ss_loss_type"], meta["ss_huber_c"], meta["ss_huber_schedule"]) == ("huber", "0.2", "constant")
    assert (meta["ss_debiased_estimation"], meta["ss_ip_noise_gamma"], meta["ss_zero_terminal_snr"]) == \
        ("True", "0.1", "True")
    assert (meta["ss_multires_noise_iterations"], meta["ss_adaptive_noise_scale"]) == ("6", "0.01")
    assert meta["modelspec.timestep_range"] == "100,1000"
