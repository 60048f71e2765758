"""The weight change one LoRA module makes, from its file tensors. The math of each network type lives in
training.lora_files' layouts (the export and its self-check use the same rules); merge applies every
type, while merge-loras and resize, which re-factor up @ down, take LoRA and LoCon (``lorafile.require_lora``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from training.contract.errors import UserError
from training.lora_files.kinds import DORA, layout_for_parts

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"


def module_scale(tensors: Mapping[str, torch.Tensor]) -> float:
    """alpha / rank; a file without alpha means alpha = rank (kohya's rule)."""
    rank = int(tensors[DOWN].shape[0])
    alpha = tensors.get(ALPHA)
    return 1.0 if alpha is None else float(alpha) / rank


def module_delta(tensors: Mapping[str, torch.Tensor], weight: torch.Tensor | None = None) -> torch.Tensor:
    """The change one module makes, in float32, shaped like the target weight. LoRA/LoCon need no weight ((alpha/r)
    * up @ down, LoCon's down [r, in, kh, kw] and up [out, r, 1, 1]); LoHa, LoKr and DoRA take the target's weight
    (its shape, and for DoRA its norms) and go through the same per-type rules the export's self-check uses."""
    layout = layout_for_parts(tensors)
    if layout is None:
        raise UserError(f"a module holds parts of no single network type: {sorted(tensors)}")
    if weight is None:
        if layout.algo != "lora" or DORA in tensors:
            raise UserError(f"the change of a {layout.algo} module needs its target weight")
        down = tensors[DOWN]
        weight = torch.empty(tensors[UP].shape[0], *down.shape[1:], device="meta")
    return layout.file_delta(dict(tensors), weight)
