"""LoHa (LyCORIS ``algo=loha``): the weight change is the Hadamard product of two low-rank products.

Parts: ``hada_w1_a`` [out, r], ``hada_w1_b`` [r, in*kh*kw], ``hada_w2_a``, ``hada_w2_b`` (same shapes) and ``alpha``;
dW = alpha/r * (w1_a @ w1_b) * (w2_a @ w2_b), reshaped to the weight. With Tucker on a 3x3 conv (use_tucker):
``hada_t1``/``hada_t2`` [r, r, kh, kw], ``hada_w1_a`` [r, out] and ``hada_w1_b`` [r, in], each half rebuilt as the
Tucker product first. r is ``hada_w1_b``'s first dimension in every loader.
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
    layer_geometry,
    rebuild_tucker,
    to_file,
)

PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha")
FACTORS = PARTS[:4]
TUCKER = ("hada_t1", "hada_t2")


class LohaLayout(Layout):
    algo = "loha"
    parts = PARTS
    peft_attrs = (*PARTS[:6], "")

    def missing(self, t: Tensors) -> list[str]:
        need = [*FACTORS, "alpha"] + (list(TUCKER) if any(p in t for p in TUCKER) else [])
        return [p for p in need if p not in t]

    def rank(self, t: Tensors) -> int | None:
        return int(t["hada_w1_b"].shape[0]) if t["hada_w1_b"].ndim else None

    def file_delta(self, t: Tensors, weight: torch.Tensor) -> torch.Tensor:
        w1a, w1b, w2a, w2b = (t[p].float() for p in FACTORS)
        if "hada_t1" in t:
            m1 = rebuild_tucker(t["hada_t1"].float(), w1a, w1b)
            m2 = rebuild_tucker(t["hada_t2"].float(), w2a, w2b)
        else:
            m1, m2 = w1a @ w1b, w2a @ w2b
        return (m1 * m2).reshape(weight.shape) * self.scale(t)

    def shape_problem(self, t: Tensors, layer: Any) -> str | None:
        out, fan_in, kernel = layer_geometry(layer)  # type: ignore[misc]
        r = self.rank(t) or 0
        if "hada_t1" in t:
            want = {"hada_t1": (r, r, *kernel), "hada_t2": (r, r, *kernel), "hada_w1_a": (r, out),
                    "hada_w1_b": (r, fan_in), "hada_w2_a": (r, out), "hada_w2_b": (r, fan_in)}
        else:
            flat_in = fan_in * math.prod(kernel)
            want = {"hada_w1_a": (out, r), "hada_w1_b": (r, flat_in), "hada_w2_a": (out, r), "hada_w2_b": (r, flat_in)}
        bad = {p: list(t[p].shape) for p, shape in want.items() if tuple(t[p].shape) != shape}
        if r < 1 or bad:
            return (f"LoHa shapes {bad or {'hada_w1_b': list(t['hada_w1_b'].shape)}} do not fit out={out}, "
                    f"in={fan_in}, kernel={kernel} at rank {r}")
        return None

    def is_layer(self, layer: Any) -> bool:
        from peft.tuners.loha import LoHaLayer

        return isinstance(layer, LoHaLayer) and ADAPTER in layer.hada_w1_a

    def export(self, layer: Any, dtype: torch.dtype) -> Tensors:
        out = {p: to_file(getattr(layer, p)[ADAPTER], dtype) for p in PARTS[:6] if ADAPTER in getattr(layer, p)}
        out["alpha"] = alpha_tensor(float(layer.scaling[ADAPTER]) * int(layer.r[ADAPTER]), dtype)
        return out

    def load(self, layer: Any, path: str, t: Tensors, *, fresh: bool) -> None:
        rank = int(t["hada_w1_b"].shape[0])
        if not fresh and layer.r[ADAPTER] != rank:
            raise UserError(f"rank mismatch on {path!r}: model r={layer.r[ADAPTER]}, file r={rank}")
        self._load_parts(layer, path, t, fresh=fresh)
        alpha = float(t["alpha"]) if "alpha" in t else float(rank)
        layer.r[ADAPTER], layer.alpha[ADAPTER], layer.scaling[ADAPTER] = rank, alpha, alpha / rank
