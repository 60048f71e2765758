"""The diffusion training objective: noise, timesteps, target per prediction type, the loss and its weights.

sd-scripts' order is kept, so a kohya config trains what it trained there:

- noise: Gaussian, plus the noise offset (its strength random when asked, raised by ``adaptive_noise_scale``),
  then multires noise; timesteps uniform in ``[min_timestep, max_timestep)``; input perturbation
  (``ip_noise_gamma``) adds extra noise to the UNet's input only, the target keeps the plain noise;
- loss: per element (l2, l1, huber, smooth_l1 with a per-timestep huber_c), times the mask, averaged per sample;
  then min-SNR, v-pred scaling, the v-pred-like term and debiased estimation, each a per-sample factor.

Everything here stays on the device: no ``.item()``, no host synchronisation, so a step can be captured in a CUDA
graph or compiled later. (The multires noise's random level sizes are drawn on the host from the CPU RNG: they are
shapes, and a CPU draw never waits for the GPU.)
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import DDPMScheduler

from training.contract.errors import UserError
from training.models.conditioning import TextEmbeds, unet_kwargs

if TYPE_CHECKING:
    from training.contract.config import TrainConfig

SNR_CAP = 1000.0  # sd-scripts caps the SNR at 1000 in its debiased and v-pred weights (t = 0 is nearly noise-free)


@dataclass(frozen=True)
class NoiseOptions:
    """How the noise and timesteps of a step are drawn."""

    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False
    min_timestep: int | None = None
    max_timestep: int | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> NoiseOptions:
        return cls(cfg.noise_offset, cfg.noise_offset_random_strength, cfg.adaptive_noise_scale,
                   cfg.multires_noise_iterations, cfg.multires_noise_discount, cfg.ip_noise_gamma,
                   cfg.ip_noise_gamma_random_strength, cfg.min_timestep, cfg.max_timestep)


@dataclass(frozen=True)
class LossOptions:
    """How the prediction's error becomes one loss value per sample (min-SNR stays a separate argument)."""

    loss_type: str = "l2"
    huber_c: float = 0.1
    huber_schedule: str = "snr"
    huber_scale: float = 1.0
    debiased_estimation_loss: bool = False
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LossOptions:
        return cls(cfg.loss_type, cfg.huber_c, cfg.huber_schedule, cfg.huber_scale, cfg.debiased_estimation_loss,
                   cfg.scale_v_pred_loss_like_noise_pred, cfg.v_pred_like_loss)


PLAIN_LOSS = LossOptions()


ZERO_TERMINAL_SNR_NEEDS_V = (
    "zero_terminal_snr on an epsilon-prediction model: the last timestep becomes pure noise, which only a "
    "v-prediction model can learn to denoise; training will be unexpected (sd-scripts warns the same). Use a "
    "v-prediction model (v_parameterization = true) or turn zero_terminal_snr off")


def prediction_advice(cfg: TrainConfig, v_prediction: bool) -> list[tuple[str, str]]:
    """What the loss options mean for the model just loaded: refused where sd-scripts refuses, a warning where it
    warns."""
    if cfg.scale_v_pred_loss_like_noise_pred and not v_prediction:
        raise UserError("scale_v_pred_loss_like_noise_pred is for v-prediction models, and this one predicts noise "
                        "(epsilon): turn it off, or set v_parameterization = true if the model is a v model")
    if cfg.v_pred_like_loss and v_prediction:
        raise UserError("v_pred_like_loss adds a v-prediction-like loss to an epsilon model, and this model is "
                        "v-prediction already: unset v_pred_like_loss")
    return [] if v_prediction or not cfg.zero_terminal_snr else [("zero_terminal_snr", ZERO_TERMINAL_SNR_NEEDS_V)]


# --- noise -----------------------------------------------------------------------------------------------------------

def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float,
                 options: NoiseOptions | None = None) -> torch.Tensor:
    """Gaussian noise, plus an optional per-channel offset (lets the model shift overall brightness), then
    multires noise. ``options`` (when given) supplies everything but ``noise_offset``."""
    options = options or NoiseOptions()
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        strength: float | torch.Tensor = noise_offset
        if options.noise_offset_random_strength:
            strength = uniform_strength(noise_offset, generator, latents)
        if options.adaptive_noise_scale is not None:
            # Brighter or darker latents (a large channel mean) get a larger offset; never a negative one.
            channel_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
            strength = torch.clamp(strength + options.adaptive_noise_scale * channel_mean, min=0.0)
        offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=latents.device,
                             dtype=latents.dtype)
        noise = noise + strength * offset
    if options.multires_noise_iterations:
        noise = multires_noise(noise, generator, options.multires_noise_iterations, options.multires_noise_discount)
    return noise


def uniform_strength(limit: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """One strength in [0, limit) for the whole batch, drawn on the device (sd-scripts draws one per step)."""
    return torch.rand((1,), generator=generator, device=like.device, dtype=like.dtype) * limit


def multires_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Pyramid noise: level i adds Gaussian noise drawn at the size divided by r**i (r uniform in [2, 4) per level),
    upsampled bilinearly and weighted by discount**i; level 0 is full size. Stops after the first level that is one
    pixel high or wide; the sum is scaled back to unit standard deviation."""
    batch, channels, height, width = noise.shape
    for level in range(iterations):
        r = 2.0 + 2.0 * float(torch.rand(()))  # CPU RNG, seeded per batch by the loop: a shape, not device data
        small_h, small_w = max(1, int(height / r**level)), max(1, int(width / r**level))
        coarse = torch.randn((batch, channels, small_h, small_w), generator=generator, device=noise.device,
                             dtype=noise.dtype)
        upsampled = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear",
                                                    align_corners=False)
        noise = noise + upsampled * discount**level
        if small_h == 1 or small_w == 1:
            break
    return noise / noise.std()


def input_noise(noise: torch.Tensor, generator: torch.Generator, options: NoiseOptions) -> torch.Tensor:
    """The noise the UNet's input gets: with input perturbation, ``noise + gamma * extra``; the target keeps
    ``noise``, so the model learns to undo a slightly wrong input."""
    if not options.ip_noise_gamma:
        return noise
    strength: float | torch.Tensor = options.ip_noise_gamma
    if options.ip_noise_gamma_random_strength:
        strength = uniform_strength(options.ip_noise_gamma, generator, noise)
    extra = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + strength * extra


def random_timesteps(batch: int, scheduler: DDPMScheduler, generator: torch.Generator,
                     device: torch.device, options: NoiseOptions | None = None) -> torch.Tensor:
    """Uniform in ``[min_timestep, max_timestep)`` (defaults: the whole schedule); equal bounds give that one
    timestep, as in sd-scripts."""
    options = options or NoiseOptions()
    low = options.min_timestep if options.min_timestep is not None else 0
    high = options.max_timestep if options.max_timestep is not None else scheduler.config.num_train_timesteps
    if low >= high:
        return torch.full((batch,), high, device=device, dtype=torch.long)
    return torch.randint(low, high, (batch,), generator=generator, device=device).long()


# --- SNR tables ------------------------------------------------------------------------------------------------------

_SNR_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # scheduler -> {(what, device): table}


def _table(scheduler: DDPMScheduler, what: str, device: torch.device) -> torch.Tensor:
    """A per-timestep table, built once per scheduler and device so a step copies nothing from the host."""
    tables = _SNR_TABLES.setdefault(scheduler, {})
    key = (what, str(device))
    if key not in tables:
        # sd-scripts computes its SNR weights before zero_terminal_snr rescales the betas; so do we: the rescaled
        # schedule's SNR is 0 at the last timestep, where 1/SNR-type weights would be infinite.
        source = _unrescaled(scheduler) if what == "weights" else scheduler
        alphas_cumprod = source.alphas_cumprod.double()
        snr = alphas_cumprod / (1 - alphas_cumprod)  # SNR = alpha_bar / (1 - alpha_bar)
        tables[key] = snr.float().to(device)
    return tables[key]


def _unrescaled(scheduler: DDPMScheduler) -> DDPMScheduler:
    if not scheduler.config.get("rescale_betas_zero_snr", False):
        return scheduler
    return DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=False)


def weighting_snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR per sample for the loss weights (min-SNR, debiased, v-pred scaling)."""
    return _table(scheduler, "weights", timesteps.device)[timesteps]


def schedule_snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR per sample of the schedule in use (zero at the last timestep with zero_terminal_snr)."""
    return _table(scheduler, "schedule", timesteps.device)[timesteps]


# --- target and loss -------------------------------------------------------------------------------------------------

def target_for(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def is_v_prediction(scheduler: DDPMScheduler) -> bool:
    return scheduler.config.prediction_type == "v_prediction"


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, g)/SNR for epsilon, min(SNR, g)/(SNR+1) for v."""
    snr = weighting_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if is_v_prediction(scheduler):
        return clipped / (snr + 1)
    return clipped / snr


def huber_c_per_sample(scheduler: DDPMScheduler, timesteps: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """huber_c for each sample's timestep: snr: (1 - c) / (1 + sigma)^2 + c with sigma = sqrt(1 / SNR), large
    where there is little noise; exponential: scale * exp(ln(c) * t / T), from scale at t = 0 down to scale * c;
    constant: scale * c."""
    c = options.huber_c
    if options.huber_schedule == "snr":
        sigma = torch.rsqrt(schedule_snr(scheduler, timesteps))
        return (1 - c) / (1 + sigma) ** 2 + c
    if options.huber_schedule == "exponential":
        rate = -math.log(c) / scheduler.config.num_train_timesteps
        return torch.exp(-rate * timesteps.float()) * options.huber_scale
    return torch.full(timesteps.shape, c * options.huber_scale, device=timesteps.device)


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str,
                     huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """The error per element. huber: 2c(sqrt(d^2 + c^2) - c), squared-like below c and linear above;
    smooth_l1: the same without the factor c (its linear part has slope 2, not 2c)."""
    if loss_type == "l2":
        return torch.nn.functional.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return torch.nn.functional.l1_loss(prediction, target, reduction="none")
    if huber_c is None:
        raise ValueError(f"{loss_type} loss needs huber_c per sample")
    c = huber_c.view(-1, *([1] * (prediction.ndim - 1)))
    smooth = 2 * (torch.sqrt((prediction - target) ** 2 + c**2) - c)
    return smooth * c if loss_type == "huber" else smooth


def masked(loss: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Element loss times the mask, the mask area-averaged to the latent size when it is larger ([B, h, w] or
    [B, 1, h, w], 1 = learn, 0 = ignore). The sample's mean still divides by every element, as in sd-scripts."""
    if mask is None:
        return loss
    mask = mask.to(device=loss.device, dtype=loss.dtype)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.shape[-2:] != loss.shape[-2:]:
        mask = torch.nn.functional.interpolate(mask, size=loss.shape[-2:], mode="area")
    return loss * mask


def weighted(loss: torch.Tensor, scheduler: DDPMScheduler, timesteps: torch.Tensor, min_snr_gamma: float | None,
             options: LossOptions) -> torch.Tensor:
    """Per-sample weights in sd-scripts' order: min-SNR, v-pred scaling, the v-pred-like term, debiased."""
    if min_snr_gamma:
        loss = loss * min_snr_weights(scheduler, timesteps, min_snr_gamma)
    needs_snr = (options.scale_v_pred_loss_like_noise_pred or options.v_pred_like_loss
                 or options.debiased_estimation_loss)
    if not needs_snr:
        return loss
    snr = torch.clamp(weighting_snr(scheduler, timesteps), max=SNR_CAP)
    v_scale = snr / (snr + 1)  # an epsilon-prediction loss is the v-prediction loss of the same error times this
    if options.scale_v_pred_loss_like_noise_pred:
        loss = loss * v_scale
    if options.v_pred_like_loss:
        loss = loss + loss / v_scale * options.v_pred_like_loss
    if options.debiased_estimation_loss:
        loss = loss * (1 / (snr + 1) if is_v_prediction(scheduler) else torch.rsqrt(snr))
    return loss


def per_sample_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    conditioning: TextEmbeds,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    min_snr_gamma: float | None = None,
    time_ids: torch.Tensor | None = None,
    *,
    options: LossOptions = PLAIN_LOSS,
    noisy_with: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss between the UNet's prediction and the target, one value per sample (float32).

    ``time_ids``: SDXL's [B, 6] micro-conditioning (ignored for SD1/SD2, whose conditioning has no pooled part).
    ``noisy_with``: the noise the input is made with when it differs from the target's (input perturbation).
    ``mask``: per-pixel loss weights (masked loss)."""
    noisy = scheduler.add_noise(latents, noise if noisy_with is None else noisy_with, timesteps)
    prediction = unet(noisy, timesteps, **unet_kwargs(conditioning, time_ids, latents.dtype)).sample
    target = target_for(scheduler, latents, noise, timesteps)
    huber_c = huber_c_per_sample(scheduler, timesteps, options) if options.loss_type in ("huber", "smooth_l1") \
        else None
    loss = masked(elementwise_loss(prediction.float(), target.float(), options.loss_type, huber_c), mask)
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    return weighted(loss, scheduler, timesteps, min_snr_gamma, options)
