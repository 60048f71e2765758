"""LoRA and LoCon (kohya ``networks.lora`` / LyCORIS ``algo=locon``), optionally with DoRA.

Parts: ``lora_down.weight`` [r, in] (conv: [r, in, kh, kw]), ``lora_up.weight`` [out, r] (conv: [out, r, 1, 1]),
``alpha`` (scale alpha/r) and, for DoRA, ``dora_scale``: the per-output magnitude m in LyCORIS's
``wd_on_output=True`` shape, [out, 1] for a Linear and [out, 1, 1, 1] for a conv. peft's DoRA normalises the same
way: W' = m * (W + dW) / ||W + dW|| with the norm over each output row.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from training.contract.errors import UserError
from training.lora_files.layouts import (
    ADAPTER,
    Layout,
    Tensors,
    alpha_tensor,
    base_layer,
    layer_geometry,
    to_file,
    weight_shape,
)

DOWN, UP, ALPHA, DORA = "lora_down.weight", "lora_up.weight", "alpha", "dora_scale"


def dora_merge(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA's weight change: m * (W + dW) / ||W + dW|| - W, the norm over each output row when ``magnitude`` has one
    value per output (wd_on_output=True), else over each input column (LyCORIS's wd_on_output=False)."""
    merged = weight + delta
    out = weight.shape[0]
    ones = [1] * (weight.dim() - 1)
    if magnitude.shape[0] == out and magnitude.numel() == out:
        norm = merged.reshape(out, -1).norm(dim=1).reshape(out, *ones)
        m = magnitude.float().reshape(out, *ones)
    else:
        cols = merged.transpose(0, 1)
        norm = cols.reshape(cols.shape[0], -1).norm(dim=1).reshape(cols.shape[0], *ones).transpose(0, 1)
        m = magnitude.float().reshape(norm.shape)
    return merged * (m / norm) - weight


class LoraLayout(Layout):
    algo = "lora"
    parts = (DOWN, UP, ALPHA, DORA)

    def missing(self, t: Tensors) -> list[str]:
        return [p for p in (DOWN, UP, ALPHA) if p not in t]

    def rank(self, t: Tensors) -> int | None:
        return int(t[DOWN].shape[0]) if t[DOWN].ndim else None

    def file_delta(self, t: Tensors, weight: torch.Tensor) -> torch.Tensor:
        down, up = t[DOWN].float(), t[UP].float()
        delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * self.scale(t)
        if DORA in t:
            delta = dora_merge(weight.float(), delta, t[DORA])
        return delta

    def shape_problem(self, t: Tensors, layer: Any) -> str | None:
        out, fan_in, kernel = layer_geometry(layer)  # type: ignore[misc]
        down, up = t[DOWN], t[UP]
        ndim = 2 + len(kernel)
        r = down.shape[0] if down.ndim else 0
        bad = down.ndim != ndim or up.ndim != ndim or up.shape[1] != r or down.shape[1] != fan_in
        bad = bad or up.shape[0] != out or not 1 <= r <= min(out, fan_in * math.prod(kernel))
        bad = bad or tuple(down.shape[2:]) != kernel or tuple(up.shape[2:]) != ((1, 1) if kernel else ())
        if bad:
            kind = type(base_layer(layer)).__name__
            return (f"shapes down{list(down.shape)} up{list(up.shape)} do not fit {kind}(in={fan_in}, out={out}, "
                    f"kernel={kernel})")
        if DORA in t and tuple(t[DORA].shape) not in _dora_shapes(layer):
            return (f"dora_scale is {list(t[DORA].shape)}, expected {list(_dora_shapes(layer)[0])} (one magnitude "
                    f"per output, LyCORIS's wd_on_output layout)")
        return None

    def is_layer(self, layer: Any) -> bool:
        from peft.tuners.lora import LoraLayer

        return isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A

    def export(self, layer: Any, dtype: torch.dtype) -> Tensors:
        if getattr(layer, "lora_bias", {}).get(ADAPTER, False):
            raise UserError("lora_bias adapters have no kohya representation; train without lora_bias to export")
        out = {DOWN: to_file(layer.lora_A[ADAPTER].weight, dtype), UP: to_file(layer.lora_B[ADAPTER].weight, dtype),
               ALPHA: alpha_tensor(float(layer.scaling[ADAPTER]) * int(layer.r[ADAPTER]), dtype)}
        if layer.use_dora.get(ADAPTER, False):
            magnitude = layer.lora_magnitude_vector[ADAPTER].weight
            out[DORA] = to_file(magnitude.reshape(_dora_shapes(layer)[0]), dtype)
        return out

    def load(self, layer: Any, path: str, t: Tensors, *, fresh: bool) -> None:
        rank = int(t[DOWN].shape[0])
        if layer.r[ADAPTER] != rank:
            raise UserError(f"rank mismatch on {path!r}: model r={layer.r[ADAPTER]}, file r={rank}")
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        if tuple(a.shape) != tuple(t[DOWN].shape) or tuple(b.shape) != tuple(t[UP].shape):
            raise UserError(f"shape mismatch on {path!r}: model {tuple(a.shape)}/{tuple(b.shape)}, "
                            f"file {tuple(t[DOWN].shape)}/{tuple(t[UP].shape)}")
        uses_dora = bool(layer.use_dora.get(ADAPTER, False))
        if uses_dora != (DORA in t):
            have, want = ("DoRA", "plain LoRA") if uses_dora else ("plain LoRA", "DoRA")
            raise UserError(f"module {path!r}: the model's adapter is {have}, the file's is {want}; set dora_wd to "
                            f"match the file")
        if uses_dora and tuple(t[DORA].shape) != _dora_shapes(layer)[0]:
            raise UserError(f"module {path!r}: dora_scale is {list(t[DORA].shape)}; peft's DoRA needs one magnitude "
                            f"per output {list(_dora_shapes(layer)[0])} (LyCORIS's wd_on_output=True)")
        alpha = float(t[ALPHA]) if ALPHA in t else float(rank)  # kohya's rule: no alpha means alpha = rank
        with torch.no_grad():
            a.copy_(t[DOWN].to(a.device, torch.float32))
            b.copy_(t[UP].to(b.device, torch.float32))
            if uses_dora:
                magnitude = layer.lora_magnitude_vector[ADAPTER].weight
                magnitude.copy_(t[DORA].to(magnitude.device, torch.float32).reshape(magnitude.shape))
        layer.lora_alpha[ADAPTER] = alpha
        layer.scaling[ADAPTER] = alpha / rank


def _dora_shapes(layer: Any) -> list[tuple[int, ...]]:
    """Accepted dora_scale shapes: one magnitude per output ([out, 1] / [out, 1, 1, 1]) first, LyCORIS's per-input
    layout ([1, in] / [1, in, 1, 1]) second."""
    shape = weight_shape(layer)
    ones = (1,) * (len(shape) - 2)
    return [(shape[0], 1, *ones), (1, shape[1], *ones)]
