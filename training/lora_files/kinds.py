"""Which layout a file module or a peft layer has: the one place that lists the network types."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from training.lora_files.layout_loha import LohaLayout
from training.lora_files.layout_lokr import LokrLayout
from training.lora_files.layout_lora import DORA, LoraLayout
from training.lora_files.layouts import Layout

LAYOUTS: dict[str, Layout] = {"lora": LoraLayout(), "loha": LohaLayout(), "lokr": LokrLayout()}
KNOWN_PARTS = frozenset(p for layout in LAYOUTS.values() for p in layout.parts)


def layout_for_parts(parts: Iterable[str]) -> Layout | None:
    """The one type whose own parts these are; None when none or several types claim them."""
    owners = {layout.algo for part in parts for layout in LAYOUTS.values() if layout.owns(part)}
    return LAYOUTS[owners.pop()] if len(owners) == 1 else None


def layout_for_layer(layer: Any) -> Layout | None:
    """The layout of a peft layer carrying our adapter, None for anything else."""
    return next((layout for layout in LAYOUTS.values() if layout.is_layer(layer)), None)


def adapter_layers(model: nn.Module) -> list[tuple[str, Any, Layout]]:
    """(path, peft layer, layout) of every adapter layer in the model."""
    out = []
    for path, module in model.named_modules():
        layout = layout_for_layer(module)
        if layout is not None:
            out.append((path, module, layout))
    return out


def network_kind(algos: set[str], dora: bool, conv3x3: bool) -> str:
    """The name users know for a file's modules: LoRA, LoCon, LoHa, LoKr, with "+DoRA"."""
    if algos - {"lora"}:
        name = "/".join({"loha": "LoHa", "lokr": "LoKr", "lora": "LoCon"}[a] for a in sorted(algos))
    else:
        name = "LoCon" if conv3x3 else "LoRA"
    return f"{name}+DoRA" if dora else name


__all__ = ["DORA", "KNOWN_PARTS", "LAYOUTS", "adapter_layers", "layout_for_layer", "layout_for_parts", "network_kind"]
