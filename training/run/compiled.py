"""The compiled step (``torch_compile = true``): the UNet compiled with static shapes, one graph per input shape
and grad mode, inductor's on-disk caches kept beside the run folders, and each compile shown as its own phase.

Why static shapes: with dynamo's automatic dynamic shapes the second bucket recompiles the UNet with symbolic sizes,
and inductor fails on some of those graphs (an invalid value range, an undecidable size comparison): the whole run
was lost. A bucketed run has a handful of shapes (each bucket, a bucket's last partial batch, the validation
batches), so one static graph per shape compiles once each, and the kernels are specialised for the sizes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from training.contract.events import EventWriter

COMPILE_CACHE_DIR = ".compile_cache"  # beside the run folders, like the latent cache: runs of one LoRA share it
# Graphs dynamo keeps per compiled function. Its default (8) is below a real dataset's buckets x (train,
# validation); past the limit it would run the extra shapes eagerly without saying so.
MAX_GRAPHS = 256


def compile_cache_folder(run_dir: Path) -> Path:
    return run_dir.parent / COMPILE_CACHE_DIR


def use_compile_cache(folder: Path) -> None:
    """Point inductor's on-disk caches (compiled graphs, autotuning, triton kernels below it) at ``folder``, so a
    second run of the same model and buckets loads its kernels instead of compiling them again."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder.resolve())


def compile_unet(unet: torch.nn.Module, backend: str) -> torch.nn.Module:
    """The UNet compiled with static shapes: one graph per input shape and grad mode, never a symbolic one."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, MAX_GRAPHS)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, MAX_GRAPHS)
    return torch.compile(unet, backend=backend, dynamic=False)


def fused_optimizer_options(optimizer_class: type, params: list[torch.Tensor], compiled: bool) -> dict[str, bool]:
    """One fused kernel per optimizer step instead of several ops per tensor, where the optimizer has one for the
    parameters' device and dtype (torch's AdamW: float types on CUDA, and on the CPU for a compiled run); {}
    otherwise. CPU runs without compile keep the per-tensor step their results were checked with."""
    if optimizer_class is not torch.optim.AdamW or not params:
        return {}
    devices = {p.device.type for p in params}
    device = devices.pop() if len(devices) == 1 else None
    if device != "cuda" and not (device == "cpu" and compiled):
        return {}
    if any(not p.is_floating_point() for p in params):
        return {}
    return {"fused": True}


def bucket_label(batch: dict) -> str:
    """'WxH' of the batch's images (latents are 1/8 of the pixels), plus the batch size."""
    tensor = batch.get("latents")
    scale = 8
    if tensor is None:
        tensor, scale = batch["pixel_values"], 1
    n, height, width = tensor.shape[0], tensor.shape[-2] * scale, tensor.shape[-1] * scale
    return f"bucket {width}x{height} (batch {n})"


def inductor_cache_hits() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"])


class CompilePhase:
    """The first step of each input shape compiles for seconds to minutes: it is reported as the "compiling"
    phase ("compiling for bucket 512x768 (batch 1): 41 s"), so a run never looks stuck on its first steps."""

    def __init__(self, events: EventWriter, enabled: bool) -> None:
        self.events, self.enabled = events, enabled
        self.seen: set[str] = set()

    @contextlib.contextmanager
    def first(self, what: str) -> Iterator[None]:
        """Around work that compiles when ``what`` is new; nothing to report otherwise."""
        if not self.enabled or what in self.seen:
            yield
            return
        self.seen.add(what)
        self.events.emit("status", phase="compiling", msg=f"compiling for {what}")
        hits, start = inductor_cache_hits(), time.perf_counter()
        yield
        cached = " (kernels from the compile cache)" if inductor_cache_hits() > hits else ""
        self.events.emit("status", phase="compiling",
                         msg=f"compiling for {what}: {time.perf_counter() - start:.0f} s{cached}")
        self.events.emit("status", phase="training", msg="training")
