"""The network's optimizer parameter groups: per-block learning rates and LoRA+, as sd-scripts' networks.lora
builds them."""

from __future__ import annotations

from typing import Any

import torch

from training.contract.network import NetworkSpec
from training.networks.blocks import block_index, block_names, lr_weights


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
