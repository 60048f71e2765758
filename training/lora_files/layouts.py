"""The tensors one module of a kohya/LyCORIS LoRA file holds, per network type, and what they mean.

A file module is ``<kohya name>.<part>``. Each type (``Layout``) knows its parts, how to read them off the peft layer
that trained them (export), the weight delta a loader computes from them (the rules A1111/Forge's built-in Lora,
ComfyUI and LyCORIS share), whether their shapes fit the target layer, and how to put them back into a peft layer
(import). The per-type classes live in ``layout_lora`` (LoRA/LoCon/DoRA), ``layout_loha`` and ``layout_lokr``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from training.contract.errors import UserError

ADAPTER = "default"  # the adapter name every peft layer of ours carries (inject_adapter_in_model's default)
Tensors = dict[str, torch.Tensor]  # one module's parts -> tensors, e.g. {"lora_down.weight": ..., "alpha": ...}


class Layout:
    """One network type's file layout; subclasses fill in the parts and the formulas."""

    algo: ClassVar[str]  # LyCORIS's algo name: lora (LoRA/LoCon, also DoRA), loha, lokr
    parts: ClassVar[tuple[str, ...]]  # every part a module of this type may hold
    peft_attrs: ClassVar[tuple[str, ...]] = ()  # peft ParameterDict attribute per part, in ``parts`` order

    def owns(self, part: str) -> bool:
        """Whether ``part`` can only belong to this type (``alpha`` is shared, so it decides nothing)."""
        return part in self.parts and part != "alpha"

    def missing(self, t: Tensors) -> list[str]:
        """Parts a module needs and lacks (loaders would skip it or fail)."""
        raise NotImplementedError

    def rank(self, t: Tensors) -> int | None:
        """The rank ``alpha`` is divided by, None where loaders use scale 1 (LoKr without a decomposed factor)."""
        raise NotImplementedError

    def scale(self, t: Tensors) -> float:
        """alpha / rank as every loader computes it; a missing alpha means alpha = rank (scale 1)."""
        rank = self.rank(t)
        if rank is None or "alpha" not in t:
            return 1.0
        return float(t["alpha"]) / rank

    def file_delta(self, t: Tensors, weight: torch.Tensor) -> torch.Tensor:
        """The change a loader applies to ``weight`` (the target's base weight), in float32."""
        raise NotImplementedError

    def shape_problem(self, t: Tensors, layer: nn.Module) -> str | None:
        """Why these tensors do not fit the Linear/Conv2d ``layer`` (None when they fit)."""
        raise NotImplementedError

    def is_layer(self, layer: Any) -> bool:
        """Whether ``layer`` is a peft layer of this type carrying our adapter."""
        raise NotImplementedError

    def export(self, layer: Any, dtype: torch.dtype) -> Tensors:
        """The file's tensors for one peft layer (adapter "default"), every loader's scale included."""
        raise NotImplementedError

    def load(self, layer: Any, path: str, t: Tensors, *, fresh: bool) -> None:
        """Copy the file's tensors into the peft layer so its delta equals the file's.

        ``fresh``: the adapter was injected for this file just now, so its parameters may be laid out again in the
        file's shapes; otherwise (resume) the shapes must already agree."""
        raise NotImplementedError

    # --- helpers the types share ---------------------------------------------------------------------------

    def _load_parts(self, layer: Any, path: str, t: Tensors, *, fresh: bool) -> None:
        """Copy every part into the layer's ParameterDict of the same name; the set of parts must agree."""
        have = {part for part, attr in zip(self.parts, self.peft_attrs, strict=True)
                if attr and ADAPTER in getattr(layer, attr)}
        want = {part for part in t if part in self.parts and part != "alpha"}
        if have != want and not fresh:
            raise UserError(f"module {path!r}: the file has {sorted(want)}, the model's {self.algo} adapter has "
                            f"{sorted(have)} (a different factor, decomposition or Tucker setting)")
        for part, attr in zip(self.parts, self.peft_attrs, strict=True):
            if not attr:
                continue
            params = getattr(layer, attr)
            if part not in t:
                if ADAPTER in params:
                    del params[ADAPTER]
                continue
            value = t[part].detach().to(torch.float32)
            current = params.get(ADAPTER)
            if current is not None and tuple(current.shape) == tuple(value.shape):
                with torch.no_grad():
                    current.copy_(value.to(current.device))
            elif fresh:
                device = current.device if current is not None else _device_of(layer)
                params[ADAPTER] = nn.Parameter(value.to(device), requires_grad=True)
            else:
                raise UserError(f"module {path!r}: {part} is {list(value.shape)} in the file, "
                                f"{list(current.shape) if current is not None else 'absent'} in the model")


def _device_of(layer: nn.Module) -> torch.device:
    weight = getattr(base_layer(layer), "weight", None)
    return weight.device if weight is not None else torch.device("cpu")


def base_layer(module: nn.Module) -> nn.Module:
    """The wrapped Linear/Conv2d for a peft layer, else the module itself."""
    get = getattr(module, "get_base_layer", None)
    return get() if callable(get) else module


def layer_geometry(layer: nn.Module) -> tuple[int, int, tuple[int, ...]] | None:
    """(out, in per group, kernel) of a Linear or Conv2d; None for anything else."""
    layer = base_layer(layer)
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels, layer.in_channels // layer.groups, tuple(layer.kernel_size)
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features, ()
    return None


def weight_shape(layer: nn.Module) -> tuple[int, ...]:
    out, fan_in, kernel = layer_geometry(layer) or (0, 0, ())
    return (out, fan_in, *kernel)


def module_kind(layer: nn.Module) -> str:
    """"conv" for a spatial Conv2d target (3x3: the layers conv_dim ranks), "linear" for a Linear or a 1x1 conv (a
    1x1 conv is a per-pixel Linear, ranked with network_dim): the counts the self-check, the size estimate and the
    Results tab all report."""
    base = base_layer(layer)
    return "conv" if isinstance(base, nn.Conv2d) and tuple(base.kernel_size) != (1, 1) else "linear"


def to_file(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.detach().to("cpu", dtype).contiguous()


def alpha_tensor(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(float(value), dtype=dtype)


def rebuild_tucker(core: torch.Tensor, w_out: torch.Tensor, w_in: torch.Tensor) -> torch.Tensor:
    """Tucker/CP conv kernel [out, in, kh, kw] from core [r, r, kh, kw], w_out [r, out] and w_in [r, in]."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, w_in, w_out)
