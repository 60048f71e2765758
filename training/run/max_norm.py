"""scale_weight_norms: kohya's max-norm regularisation of LoRA modules, applied after each optimizer step.

Each module's weight change is up @ down * (alpha / rank). When its Frobenius norm exceeds the limit, up and down are
both multiplied by sqrt(limit / norm), so the product's norm becomes the limit. As in kohya, the norm is first raised
to at least half the limit (a tiny module is never scaled up) and the statistics report the norms after scaling.

Everything stays on the device: the three statistics are tensors the loop reads back with the losses, so the
regularisation adds no host synchronisation to a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.lora_files.kinds import adapter_layers
from training.lora_files.layouts import ADAPTER


@dataclass(frozen=True)
class NormStats:
    """kohya's log values of one step, on the device: modules scaled, mean and max module norm after scaling."""

    keys_scaled: torch.Tensor
    average_key_norm: torch.Tensor
    max_key_norm: torch.Tensor


class MaxNorm:
    """The LoRA modules of the trained models, and the step that keeps their norms at or below ``limit``."""

    def __init__(self, models: list[nn.Module], limit: float) -> None:
        self.limit = limit
        self.modules = [(layer.lora_B[ADAPTER].weight, layer.lora_A[ADAPTER].weight, layer.scaling[ADAPTER])
                        for model in models for _, layer, layout in adapter_layers(model) if layout.algo == "lora"]

    @torch.no_grad()
    def apply(self) -> NormStats | None:
        if not self.modules:
            return None
        norms, scaled = [], []
        for up, down, scale in self.modules:
            norm = ((up.flatten(1).float() @ down.flatten(1).float()) * scale).norm()
            floored = norm.clamp(min=self.limit / 2)
            ratio = floored.clamp(max=self.limit) / floored
            factor = ratio.sqrt()
            up.mul_(factor.to(up.dtype))
            down.mul_(factor.to(down.dtype))
            norms.append(norm * ratio)
            scaled.append(ratio != 1)
        after = torch.stack(norms)
        return NormStats(torch.stack(scaled).sum(), after.mean(), after.max())
