"""kohya's three dropouts for LoRA/LoCon layers, which peft's LoRA lacks (peft drops the layer's input instead).

On every training forward of a LoRA layer, applied to the output of ``lora_A`` (kohya's ``lora_down``), as kohya's
networks.lora does:

- ``dropout`` (``network_dropout``): each value of that output zeroed with probability p, the rest scaled by
  1 / (1 - p);
- ``rank_dropout``: whole ranks zeroed per sample with probability p, the rest scaled by 1 / (1 - p), as if the rank
  were smaller;
- ``module_dropout``: with probability p the layer's adapter contributes nothing to this forward.

LoHa and LoKr need none of this: peft's layers have rank_dropout and module_dropout of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from training.networks.lora import ADAPTER

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LoraDropout:
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.dropout or self.rank_dropout or self.module_dropout)


def _rank_mask(hidden: torch.Tensor, p: float) -> torch.Tensor:
    """A keep-mask over (sample, rank), shaped to broadcast over a Linear's (B, [T,] r) or a conv's (B, r, H, W)."""
    import torch

    rank_dim = 1 if hidden.dim() == 4 else hidden.dim() - 1
    shape = [1] * hidden.dim()
    shape[0], shape[rank_dim] = hidden.shape[0], hidden.shape[rank_dim]
    keep = torch.rand(shape, device=hidden.device) > p
    return keep.to(hidden.dtype) / (1.0 - p)


def drop_hidden(settings: LoraDropout, module: torch.nn.Module, _inputs, hidden: torch.Tensor) -> torch.Tensor:
    """The forward hook on ``lora_A``: ``hidden`` is its output, the rank-r activation."""
    import torch
    import torch.nn.functional as F

    if not module.training:
        return hidden
    if settings.module_dropout and float(torch.rand(1)) < settings.module_dropout:
        return hidden * 0.0  # keeps the graph (and the optimizer's view of the parameters) intact
    if settings.dropout:
        hidden = F.dropout(hidden, p=settings.dropout, training=True)
    if settings.rank_dropout:
        hidden = hidden * _rank_mask(hidden, settings.rank_dropout)
    return hidden


def install_lora_dropout(model: torch.nn.Module, settings: LoraDropout) -> int:
    """Hook ``settings`` into every peft LoRA layer of ``model``; returns how many layers got it."""
    from peft.tuners.lora import LoraLayer

    if not settings.active:
        return 0
    count = 0
    for layer in model.modules():
        if isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A:
            layer.lora_A[ADAPTER].register_forward_hook(partial(drop_hidden, settings))
            count += 1
    return count
