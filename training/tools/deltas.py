"""The weight change one LoRA module makes, from its file tensors: the one place that knows the math of a network
type. LoRA and LoCon only for now; the other types (LoHa, LoKr, DoRA) are refused by ``lorafile.require_lora``
before any delta is asked for."""

from __future__ import annotations

from collections.abc import Mapping

import torch

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"


def module_scale(tensors: Mapping[str, torch.Tensor]) -> float:
    """alpha / rank; a file without alpha means alpha = rank (kohya's rule)."""
    rank = int(tensors[DOWN].shape[0])
    alpha = tensors.get(ALPHA)
    return 1.0 if alpha is None else float(alpha) / rank


def module_delta(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(alpha/r) * up @ down in float32, shaped like the target weight: [out, in] for a Linear, [out, in, kh, kw]
    for a Conv2d (LoCon's down is [r, in, kh, kw], its up [out, r, 1, 1])."""
    down, up = tensors[DOWN].float(), tensors[UP].float()
    rank = down.shape[0]
    product = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
    return module_scale(tensors) * product.reshape(up.shape[0], *down.shape[1:])
