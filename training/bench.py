"""Training-speed benchmark on a full-size SD1.5 architecture with random weights (no download needed).

    python -m training.bench --batch 1 --steps 50
    python -m training.bench --batch 8 --steps 50 --compile

Runs the same ``train_step`` as real training on cached-latent-style batches (random latents and text embeddings of
the real shapes, as with cache_latents and a frozen text encoder), after warm-up steps, and prints images/s,
seconds per step and peak GPU memory. Numbers go to docs/benchmarks.md with the command that made them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from training.config import TrainConfig
from training.models.families import SD1


def build_unet(device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(str(Path(SD1.config_dir) / "unet"))
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    return unet.to(dtype)


def make_trainer(args: argparse.Namespace):
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from training.network import UNET_TARGETS, add_lora
    from training.optim import make_optimizer, make_scheduler

    cfg = TrainConfig(network_dim=args.rank, network_alpha=args.rank / 2, train_batch_size=args.batch,
                      mixed_precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
                      network_train_unet_only=True, max_train_steps=args.steps + args.warmup,
                      optimizer_type=args.optimizer)
    accelerator = Accelerator(mixed_precision=args.precision if torch.cuda.is_available() else "no")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    unet = build_unet(accelerator.device, dtype)
    params = add_lora(unet, UNET_TARGETS, cfg.network_dim, cfg.network_alpha)
    for p in params:
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = make_optimizer(cfg, [{"params": params, "lr": 1e-4}])
    lr_scheduler = make_scheduler(cfg, optimizer, cfg.max_train_steps)
    model = torch.compile(unet) if args.compile else unet
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    scheduler = DDPMScheduler.from_pretrained(str(Path(SD1.config_dir) / "scheduler"))
    return SimpleNamespace(cfg=cfg, accelerator=accelerator, unet=model, text_encoder=model, params=params,
                           optimizer=optimizer, lr_scheduler=lr_scheduler, weight_dtype=dtype, text_cache=None,
                           base=SimpleNamespace(noise_scheduler=scheduler),
                           generator=torch.Generator(accelerator.device).manual_seed(0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="bf16")
    parser.add_argument("--optimizer", default="AdamW")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    """Train args.steps steps after args.warmup and return the figures."""
    from training.loop import train_step

    tr = make_trainer(args)
    device = tr.accelerator.device
    side = args.resolution // 8
    batch = {"latents": torch.randn(args.batch, 4, side, side, device=device),
             "caption": [""] * args.batch, "path": [""] * args.batch}
    cond = torch.randn(args.batch, 77, 768, device=device, dtype=tr.weight_dtype)
    tr.text_cache = {"": cond[0]}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        train_step(tr, batch)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [train_step(tr, batch) for _ in range(args.steps)]
    sync()
    seconds = time.perf_counter() - start
    assert torch.isfinite(torch.stack(losses)).all(), "non-finite loss in benchmark"
    return {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "model": "SD1.5 UNet (random weights)", "resolution": args.resolution, "batch": args.batch,
        "precision": tr.accelerator.mixed_precision, "rank": args.rank, "compile": args.compile,
        "gradient_checkpointing": args.gradient_checkpointing, "steps": args.steps,
        "images_per_s": round(args.steps * args.batch / seconds, 2), "s_per_step": round(seconds / args.steps, 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> None:
    from training.__main__ import quiet_libraries

    quiet_libraries()
    print(json.dumps(measure(parse_args(argv))))


if __name__ == "__main__":
    main()
