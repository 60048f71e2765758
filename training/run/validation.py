"""A stable validation loss: the same images, noise and timesteps at every evaluation.

The raw training loss jumps with the random timestep of each step and says little about progress. Evaluating fixed
images at fixed timesteps spread over the schedule, with fixed noise, gives a smooth curve whose minimum marks where
the LoRA stops generalising (method: spacepxl's "demystifying SD fine-tuning" study; kohya's validation loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from training.data.buckets import buckets_for
from training.data.images import crop_geometry, fit_to_bucket, load_image, to_tensor
from training.models.conditioning import TextEmbeds, add_time_ids
from training.models.text import encode_text
from training.run.loss import per_sample_loss

if TYPE_CHECKING:
    from training.contract.config import TrainConfig
    from training.data.folder import ImageItem
    from training.data.latents import LatentCache
    from training.models.loading import BaseModel

TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass
class ValidationSet:
    kind: str                          # "held-out" images or a fixed "train-subset"
    latents: list[torch.Tensor]        # one [T, C, h, w] tensor per image (repeated per timestep)
    captions: list[str]
    noise: list[torch.Tensor]
    timesteps: torch.Tensor
    time_ids: list[torch.Tensor]       # one [T, 6] SDXL micro-conditioning per image (unused by SD1/SD2)


def _encode_image(base: BaseModel, item: ImageItem, bucket: tuple[int, int], cache: LatentCache | None, device):
    if cache is not None:
        return cache.get(item.path, bucket, flip=False)
    image, _ = fit_to_bucket(load_image(item.path), bucket)
    pixels = to_tensor(image, flip=False).unsqueeze(0).to(device, base.vae.dtype)
    with torch.no_grad():
        return (base.vae.encode(pixels).latent_dist.mean.float() * base.vae.config.scaling_factor)[0]


def build_validation_set(cfg: TrainConfig, base: BaseModel, items: list[ImageItem], kind: str,
                         cache: LatentCache | None, device) -> ValidationSet:
    n_steps = base.noise_scheduler.config.num_train_timesteps
    timesteps = torch.tensor([int(f * n_steps) for f in TIMESTEP_FRACTIONS], device=device)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    latents, noise, time_ids = [], [], []
    for item, bucket in zip(items, buckets_for(cfg, items), strict=True):
        lat = _encode_image(base, item, bucket, cache, device).to(device, torch.float32)
        latents.append(lat.unsqueeze(0).expand(len(timesteps), *lat.shape).contiguous())
        noise.append(torch.randn((len(timesteps), *lat.shape), generator=generator).to(device))
        _, (top, left) = crop_geometry(item.size, bucket)
        ids = add_time_ids(*(torch.tensor([pair]) for pair in ((item.size[1], item.size[0]), (top, left),
                                                                (bucket[1], bucket[0]))))
        time_ids.append(ids.to(device).expand(len(timesteps), -1))
    return ValidationSet(kind, latents, [it.caption for it in items], noise, timesteps, time_ids)


@torch.no_grad()
def validation_loss(val: ValidationSet, unet, text_encoders: list, base: BaseModel, clip_skip: int,
                    text_cache: dict[str, TextEmbeds] | None, dtype: torch.dtype) -> float:
    """Mean unweighted loss over images x fixed timesteps. LoRA dropout is off during evaluation."""
    modes = [(m, m.training) for m in (unet, *text_encoders)]
    for model, _ in modes:
        model.eval()
    total = torch.zeros((), device=val.timesteps.device)
    for latents, caption, noise, time_ids in zip(val.latents, val.captions, val.noise, val.time_ids, strict=True):
        if text_cache is not None and caption in text_cache:
            cond = TextEmbeds.stack([text_cache[caption]])
        else:
            cond = encode_text(text_encoders, base.tokenizers, [caption], clip_skip)
        cond = cond.to(latents.device, dtype).expand(len(val.timesteps))
        with torch.autocast(latents.device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = per_sample_loss(unet, base.noise_scheduler, latents.to(dtype), cond, noise.to(dtype),
                                   val.timesteps, time_ids=time_ids)
        total += loss.mean()
    for model, mode in modes:
        model.train(mode)
    return float(total / len(val.latents))
