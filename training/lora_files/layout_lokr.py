"""LoKr (LyCORIS ``algo=lokr``): the weight change is a Kronecker product w1 (x) w2.

Parts: the small factor ``lokr_w1`` [a, c] (or ``lokr_w1_a`` [a, r] @ ``lokr_w1_b`` [r, c] with decompose_both), the
large one ``lokr_w2`` [b, d] (conv: [b, d, kh, kw]) or ``lokr_w2_a`` [b, r] @ ``lokr_w2_b`` [r, d*kh*kw], or with
Tucker on a 3x3 conv ``lokr_t2`` [r, r, kh, kw], ``lokr_w2_a`` [r, b], ``lokr_w2_b`` [r, d]; out = a*b, in = c*d.
Loaders scale by alpha/r only when a factor is decomposed (r = that factor's rank); with both factors whole they use
scale 1 whatever ``alpha`` says, so the export multiplies peft's scale into ``lokr_w1`` and writes alpha = r.
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

PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha")


class LokrLayout(Layout):
    algo = "lokr"
    parts = PARTS
    peft_attrs = (*PARTS[:7], "")

    def missing(self, t: Tensors) -> list[str]:
        need = ["alpha"]
        for whole, pair in (("lokr_w1", ("lokr_w1_a", "lokr_w1_b")), ("lokr_w2", ("lokr_w2_a", "lokr_w2_b"))):
            if whole not in t:
                need += list(pair) if any(p in t for p in pair) else [whole]
        return [p for p in need if p not in t]

    def rank(self, t: Tensors) -> int | None:
        """ComfyUI's and A1111's rule: the decomposed factor's rank (w2's when both are), None when neither is."""
        for part in ("lokr_w2_b", "lokr_w1_b"):
            if part in t and t[part].ndim:
                return int(t[part].shape[0])
        return None

    def factors(self, t: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = t["lokr_w1"].float() if "lokr_w1" in t else t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()
        if "lokr_w2" in t:
            w2 = t["lokr_w2"].float()
        elif "lokr_t2" in t:
            w2 = rebuild_tucker(t["lokr_t2"].float(), t["lokr_w2_a"].float(), t["lokr_w2_b"].float())
        else:
            w2 = t["lokr_w2_a"].float() @ t["lokr_w2_b"].float()
        return w1, w2

    def file_delta(self, t: Tensors, weight: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.factors(t)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1.contiguous(), w2.contiguous()).reshape(weight.shape) * self.scale(t)

    def shape_problem(self, t: Tensors, layer: Any) -> str | None:
        out, fan_in, kernel = layer_geometry(layer)  # type: ignore[misc]
        shapes = {p: list(v.shape) for p, v in t.items() if p != "alpha"}
        w1a, w1b = t.get("lokr_w1_a"), t.get("lokr_w1_b")
        if "lokr_w1" in t:
            a, c = (t["lokr_w1"].shape if t["lokr_w1"].ndim == 2 else (0, 0))
        elif w1a is not None and w1b is not None and w1a.ndim == w1b.ndim == 2 and w1a.shape[1] == w1b.shape[0]:
            a, c = w1a.shape[0], w1b.shape[1]
        else:
            a = c = 0
        if not a or not c or out % a or fan_in % c:
            return f"LoKr factor w1 {shapes} does not divide out={out}, in={fan_in}"
        b, d, r = out // a, fan_in // c, self.rank(t) or 0
        if "lokr_w2" in t:
            want = {"lokr_w2": (b, d, *kernel)}
        elif "lokr_t2" in t:
            want = {"lokr_t2": (r, r, *kernel), "lokr_w2_a": (r, b), "lokr_w2_b": (r, d)}
        else:
            want = {"lokr_w2_a": (b, r), "lokr_w2_b": (r, d * math.prod(kernel))}
        bad = {p: list(t[p].shape) for p, shape in want.items() if tuple(t[p].shape) != shape}
        if bad or ("lokr_w1_b" in t and "lokr_w2" not in t and t["lokr_w1_b"].shape[0] != r):
            return f"LoKr shapes {shapes} do not fit out={out}, in={fan_in}, kernel={kernel} (w2 should be {want})"
        return None

    def is_layer(self, layer: Any) -> bool:
        from peft.tuners.lokr import LoKrLayer

        return isinstance(layer, LoKrLayer) and ADAPTER in layer._available_adapters

    def export(self, layer: Any, dtype: torch.dtype) -> Tensors:
        raw = {p: getattr(layer, p)[ADAPTER] for p in PARTS[:7] if ADAPTER in getattr(layer, p)}
        scaling, r = float(layer.scaling[ADAPTER]), int(layer.r[ADAPTER])
        if self.rank(raw) is None:  # both factors whole: loaders use scale 1, so peft's scale goes into w1
            raw["lokr_w1"] = raw["lokr_w1"].detach().float() * scaling
            alpha = float(r)
        else:
            alpha = scaling * int(self.rank(raw))  # type: ignore[arg-type]
        out = {p: to_file(v, dtype) for p, v in raw.items()}
        out["alpha"] = alpha_tensor(alpha, dtype)
        return out

    def load(self, layer: Any, path: str, t: Tensors, *, fresh: bool) -> None:
        rank = self.rank(t)
        if rank is not None and not fresh and layer.r[ADAPTER] != rank:
            raise UserError(f"rank mismatch on {path!r}: model r={layer.r[ADAPTER]}, file r={rank}")
        self._load_parts(layer, path, t, fresh=fresh)
        if rank is None:  # scale 1 whatever the file's alpha: the scale is in the factors
            if fresh and "alpha" in t:  # the file's alpha is the rank LyCORIS trained with; keep it for re-export
                layer.r[ADAPTER] = max(1, round(float(t["alpha"])))
            layer.alpha[ADAPTER], layer.scaling[ADAPTER] = float(layer.r[ADAPTER]), 1.0
            return
        alpha = float(t["alpha"]) if "alpha" in t else float(rank)
        layer.r[ADAPTER], layer.alpha[ADAPTER], layer.scaling[ADAPTER] = rank, alpha, alpha / rank
