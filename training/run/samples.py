"""Sample images during training: the prompts (``training.contract.prompts``) rendered with fixed seeds through the
family's diffusers pipeline, around the models being trained, into files named like kohya's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from training.contract.layout import sample_file_name
from training.contract.prompts import SamplePrompt

if TYPE_CHECKING:
    from training.models.loading import BaseModel


def make_scheduler(name: str, base_config: dict):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
               "dpmsolver++": DPMSolverMultistepScheduler}
    return classes[name].from_config(base_config)


def sample_pipeline(base: BaseModel, unet, text_encoders: list, sampler: str):
    """The diffusers pipeline for this family around the models being trained (LoRA active)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_scheduler(sampler, base.noise_scheduler.config)
    if len(text_encoders) == 2:
        return StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=base.tokenizer,
            tokenizer_2=base.tokenizer_2, unet=unet, scheduler=scheduler)
    return StableDiffusionPipeline(
        vae=base.vae, text_encoder=text_encoders[0], tokenizer=base.tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def prompt_kwargs(base: BaseModel, text_encoders: list, p: SamplePrompt, clip_skip: int) -> dict:
    """Prompt embeddings from our own encoder (the clip skip and layers training uses), not the pipeline's."""
    from training.models.text import encode_text

    cond = encode_text(text_encoders, base.tokenizers, [p.prompt], clip_skip)
    uncond = encode_text(text_encoders, base.tokenizers, [p.negative], clip_skip)
    kwargs = {"prompt_embeds": cond.hidden, "negative_prompt_embeds": uncond.hidden}
    if cond.pooled is not None:
        kwargs |= {"pooled_prompt_embeds": cond.pooled, "negative_pooled_prompt_embeds": uncond.pooled}
    return kwargs


def generate_samples(base: BaseModel, unet, text_encoders: list, prompts: list[SamplePrompt], sampler: str,
                     clip_skip: int, out_dir: Path, output_name: str, step: int, epoch: int | None, device,
                     dtype) -> list[Path]:
    """Render each prompt with its fixed seed using the models being trained (LoRA active)."""
    import torch

    pipe = sample_pipeline(base, unet, text_encoders, sampler)
    pipe.set_progress_bar_config(disable=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, p in enumerate(prompts):
        generator = torch.Generator(device=device).manual_seed(p.seed)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            image = pipe(**prompt_kwargs(base, text_encoders, p, clip_skip), width=p.width, height=p.height,
                         num_inference_steps=p.steps, guidance_scale=p.cfg_scale, generator=generator).images[0]
        path = out_dir / sample_file_name(output_name, step, epoch, i, p.seed)
        tmp = path.with_suffix(".tmp.png")
        image.save(tmp)
        tmp.replace(path)
        paths.append(path)
    return paths
