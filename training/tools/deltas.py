"""The weight change one LoRA module makes, from its file tensors. The math of each network type lives in
training.lora_files' layouts (the export and its self-check use the same rules): ``module_delta`` gives the change
shaped like a known target weight (merge), ``flat_delta`` gives it as an [out, in*kh*kw] matrix with the layer's
kernel read from the file alone (inspect, and resize / merge-loras, which re-factor any type into LoRA/LoCon)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from training.contract.errors import UserError
from training.lora_files.kinds import DORA, layout_for_parts

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"
# Layers of the UNet whose kind a LoHa file does not show (its factors are flat): kohya names of 3x3 convolutions
# and of 1x1 ones, in the diffusers and the SGM naming. SD1's transformer projections are 1x1 convolutions; SD2's
# and SDXL's are Linear (diffusers' use_linear_projection). tests/tools checks the rule against every bundled table.
CONV3X3 = re.compile(r"_(conv1|conv2|conv|conv_in|conv_out|in_layers_2|out_layers_3|op|input_blocks_0_0|out_2)$")
CONV1X1 = re.compile(r"_(conv_shortcut|skip_connection)$")
SD1_PROJECTION = re.compile(r"^lora_unet_.*_(proj_in|proj_out)$")


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


def flat_delta(name: str, tensors: Mapping[str, torch.Tensor], family: str | None) -> tuple[torch.Tensor,
                                                                                          tuple[int, ...]]:
    """(the change as an [out, in*kh*kw] float32 matrix, the layer's kernel: () Linear, (1, 1) or (3, 3) a conv).
    DoRA's change depends on the base weight, which a LoRA file does not hold: refused (merge it into the
    checkpoint instead)."""
    if DORA in tensors:
        raise UserError(f"{name}: a DoRA module's change depends on the base model's weights, which the file does "
                        "not hold; merge it into the checkpoint with `merge` instead")
    layout = layout_for_parts(tensors)
    if layout is None:
        raise UserError(f"{name}: holds parts of no single network type: {sorted(tensors)}")
    out, fan_in, kernel = _geometry(layout.algo, name, tensors, family)
    delta = layout.file_delta(dict(tensors), torch.empty(out, fan_in, *kernel, device="meta"))
    return delta.reshape(out, -1), kernel


def _geometry(algo: str, name: str, t: Mapping[str, torch.Tensor], family: str | None) -> tuple[int, int, tuple]:
    """(out, in, kernel) of the module's layer from its factors' shapes; a flat factor's kernel from its name."""
    if algo == "lora":
        down = t[DOWN]
        return int(t[UP].shape[0]), int(down.shape[1]), tuple(int(k) for k in down.shape[2:])
    if algo == "loha":
        if "hada_t1" in t:  # Tucker: w1_a [r, out], w1_b [r, in], t1 [r, r, kh, kw]
            return int(t["hada_w1_a"].shape[1]), int(t["hada_w1_b"].shape[1]), tuple(t["hada_t1"].shape[2:])
        out, flat = int(t["hada_w1_a"].shape[0]), int(t["hada_w1_b"].shape[1])
    else:
        w1 = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        if "lokr_t2" in t:
            w2 = (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
        else:
            w2 = t["lokr_w2"].shape if "lokr_w2" in t else (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])
        if len(w2) == 4:
            return int(w1[0] * w2[0]), int(w1[1] * w2[1]), tuple(int(k) for k in w2[2:])
        out, flat = int(w1[0] * w2[0]), int(w1[1] * w2[1])
    kernel = named_kernel(name, family)
    return out, flat // math.prod(kernel or (1,)), kernel


def named_kernel(name: str, family: str | None) -> tuple[int, ...]:
    """The kernel of the layer a kohya module name points at: (3, 3), (1, 1) or () for a Linear."""
    if CONV3X3.search(name) and name.startswith("lora_unet_"):
        return (3, 3)
    if CONV1X1.search(name) or (family == "sd1" and SD1_PROJECTION.search(name)):
        return (1, 1)
    return ()
