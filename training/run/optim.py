"""Optimizer and learning-rate schedule factories. Optional optimizers come from extras with a clear message."""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.optimization import get_scheduler

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.models.low_precision import StochasticAdamW
from training.run.compiled import fused_optimizer_options

# optimizer_type -> (module, class name, pip extra that provides it)
OPTIONAL = {
    "AdamW8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes"),
    "Lion": ("bitsandbytes.optim", "Lion", "bitsandbytes"),
    "Prodigy": ("prodigyopt", "Prodigy", "prodigyopt"),
}


def _import_optional(name: str) -> type:
    module, cls, package = OPTIONAL[name]
    try:
        mod = __import__(module, fromlist=[cls])
    except Exception as err:  # bitsandbytes can fail with OSError/RuntimeError, not only ImportError
        raise UserError(
            f"optimizer_type = '{name}' needs the '{package}' package ({type(err).__name__}: {err}); "
            f"install it with: pip install -e \".[optim]\"  or choose optimizer_type = 'AdamW'") from None
    return getattr(mod, cls)


def make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """groups: [{"params": [...], "lr": ...}, ...] -- one per trained part so each keeps its own learning rate."""
    name = cfg.optimizer_type
    if name == "AdamW" and cfg.full_bf16:
        return StochasticAdamW(groups, weight_decay=1e-2)  # bf16 LoRA weights: stochastic rounding (issue 16)
    if name == "AdamW":
        params = [p for g in groups for p in g["params"]]
        fused = fused_optimizer_options(torch.optim.AdamW, params, cfg.torch_compile)  # issue 16's fast path
        return torch.optim.AdamW(groups, weight_decay=1e-2, **fused)
    if name == "Adafactor":
        # torch's own Adafactor (torch >= 2.5): fixed learning rates, as kohya uses it with relative_step=False
        return torch.optim.Adafactor(groups, weight_decay=0.0)
    cls = _import_optional(name)
    if name == "Prodigy":
        return cls(groups, weight_decay=1e-2, safeguard_warmup=True, use_bias_correction=True)
    return cls(groups, weight_decay=1e-2)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """lr_warmup_steps below 1 is a share of the run (kohya accepts both forms)."""
    value = cfg.lr_warmup_steps
    return math.ceil(value * total_steps) if value < 1 else int(value)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    return get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
        num_cycles=cfg.lr_scheduler_num_cycles,
    )
