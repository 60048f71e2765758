"""Sample images during training: kohya's prompt-file syntax, fixed seeds, files named like kohya's.

Prompt file: one prompt a line, ``#`` comments, options after the prompt: ``--n`` negative prompt, ``--w``/``--h``
size, ``--d`` seed, ``--l`` CFG scale, ``--s`` steps. A config value without a file is read as prompts split by ';'.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from training.errors import UserError

if TYPE_CHECKING:
    from training.models.loading import BaseModel

OPTION = re.compile(r"\s--([nwhdls])\s+")


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int = 1234
    cfg_scale: float = 7.0
    steps: int = 28


def parse_prompt_line(line: str, default_size: tuple[int, int], index: int) -> SamplePrompt:
    parts = OPTION.split(" " + line.strip())
    sample = SamplePrompt(parts[0].strip(), width=default_size[0], height=default_size[1], seed=1234 + index)
    for flag, value in zip(parts[1::2], parts[2::2], strict=True):
        value = value.strip()
        try:
            if flag == "n":
                sample.negative = value
            elif flag in "wh":
                size = max(64, int(value) // 8 * 8)
                setattr(sample, "width" if flag == "w" else "height", size)
            elif flag == "d":
                sample.seed = int(value)
            elif flag == "l":
                sample.cfg_scale = float(value)
            elif flag == "s":
                sample.steps = max(1, min(int(value), 150))
        except ValueError:
            raise UserError(f"sample prompt {index + 1}: --{flag} {value!r} is not a number") from None
    return sample


def load_prompts(spec: str | None, default_size: tuple[int, int]) -> list[SamplePrompt]:
    """Prompts from a file path or from the text itself (';'-separated)."""
    if not spec:
        return []
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".txt", ".prompt", ".prompts") or path.exists():
        if not path.is_file():
            raise UserError(f"sample_prompts: file {path} not found; give a prompt file or prompts split by ';'")
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    else:
        lines = spec.split(";")
    lines = [ln for ln in (x.strip() for x in lines) if ln and not ln.startswith("#")]
    return [parse_prompt_line(line, default_size, i) for i, line in enumerate(lines)]


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


def sample_file_name(output_name: str, step: int, epoch: int | None, index: int, seed: int) -> str:
    """kohya's pattern: <name>_e000003_00_<time>_<seed>.png for epoch samples, <name>_000120_... for steps."""
    suffix = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name}_{suffix}_{index:02d}_{time.strftime('%Y%m%d%H%M%S')}_{seed}.png"


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
