"""Optimizer and learning-rate schedule factories, and the network's parameter groups. Optional optimizers come from
extras with a clear message."""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.optimization import get_scheduler

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.contract.network import NetworkSpec
from training.networks.blocks import block_index, block_names, lr_weights

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
    if name == "AdamW":
        return torch.optim.AdamW(groups, weight_decay=1e-2)
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


def network_param_groups(model: torch.nn.Module, lr: float, name: str, spec: NetworkSpec, *, unet: bool,
                         sdxl: bool) -> list[dict[str, Any]]:
    """One trained model's optimizer groups, as sd-scripts' networks.lora builds them: on the UNet one group per
    block when per-block learning rates are set (lr x the block's weight, named ``unet_IN04`` and so on), and with
    LoRA+ the up (B) matrices apart at lr x ratio (``..._plus``). A group whose lr comes out 0 is not trained at all:
    its parameters are frozen and left out. Groups keep the model's parameter order."""
    weights = lr_weights(spec, sdxl) if unet else None
    names = block_names(sdxl)
    ratio = spec.loraplus_ratio(unet)
    groups: dict[str, dict[str, Any]] = {}
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        label, group_lr = name, lr
        index = block_index(param_name, sdxl) if weights is not None else None
        if index is not None:
            label, group_lr = f"{name}_{names[index]}", lr * weights[index]  # type: ignore[index]
        if ratio is not None and ".lora_B." in param_name:  # peft's lora_B is kohya's lora_up
            label, group_lr = f"{label}_plus", group_lr * ratio
        groups.setdefault(label, {"params": [], "lr": group_lr, "name": label})["params"].append(param)
    for group in groups.values():
        if group["lr"] == 0:
            for param in group["params"]:
                param.requires_grad_(False)
    return [g for g in groups.values() if g["lr"] != 0]
