"""The diffusion training objective: noise, timesteps, target per prediction type, min-SNR weighting.

Everything here stays on the device: no ``.item()``, no host synchronisation, so a step can be captured in a CUDA
graph or compiled later.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from training.models.conditioning import TextEmbeds, unet_kwargs


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float) -> torch.Tensor:
    """Gaussian noise, plus an optional per-channel offset (lets the model shift overall brightness)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator, device=latents.device,
                             dtype=latents.dtype)
        noise = noise + noise_offset * offset
    return noise


def target_for(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, g)/SNR for epsilon, min(SNR, g)/(SNR+1) for v."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def per_sample_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    conditioning: TextEmbeds,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    min_snr_gamma: float | None = None,
    time_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the UNet's prediction and the target, one value per sample (float32).

    ``time_ids``: SDXL's [B, 6] micro-conditioning (ignored for SD1/SD2, whose conditioning has no pooled part)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, **unet_kwargs(conditioning, time_ids, latents.dtype)).sample
    target = target_for(scheduler, latents, noise, timesteps)
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if min_snr_gamma:
        loss = loss * min_snr_weights(scheduler, timesteps, min_snr_gamma)
    return loss


def random_timesteps(batch: int, scheduler: DDPMScheduler, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    return torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator,
                         device=device).long()
