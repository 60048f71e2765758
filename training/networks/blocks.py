"""networks.lora's UNet blocks: the block each module is in, per-block ranks and per-block learning-rate weights.

Torch-free (the size estimate uses it on the module tables). sd-scripts numbers an SD1/SD2 UNet's blocks 0..24:
IN00..IN11 (0..11; IN00 is ``conv_in`` and never holds an adapter), MID (12), OUT00..OUT11 (13..24). Down block
``i``'s resnet or attention ``j`` is IN(1 + 3i + j) and its downsampler IN(3 + 3i); up block ``i``'s resnet or
attention ``j`` is OUT(3i + j) and its upsampler OUT(3i + 2). SDXL follows its SGM layout with 23: the time
embedding (0), IN00..IN08 (1..9: ``input_blocks.n`` is 1 + n), MID00..MID02 (10..12: resnet, attention, resnet),
OUT00..OUT08 (13..21), the output layers (22). The same arithmetic maps diffusers' paths onto both numberings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from training.contract.errors import UserError
from training.contract.network import NetworkSpec

SD_SIDE, SD_MID = 12, 1  # blocks per side (down or up) and in the middle: 12 + 1 + 12 = 25
SDXL_SIDE, SDXL_MID = 9, 3  # 1 + 9 + 3 + 9 + 1 = 23

_SIDE_PATH = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.")
_SDXL_MID = {"resnets.0.": 0, "attentions.0.": 1, "resnets.1.": 2}


def block_count(sdxl: bool) -> int:
    return 1 + 2 * SDXL_SIDE + SDXL_MID + 1 if sdxl else 2 * SD_SIDE + SD_MID


def block_names(sdxl: bool) -> list[str]:
    """Each block's label, by index (the names the per-block learning-rate groups carry)."""
    if sdxl:
        return (["EMB"] + [f"IN{n:02d}" for n in range(SDXL_SIDE)] + [f"MID{n:02d}" for n in range(SDXL_MID)]
                + [f"OUT{n:02d}" for n in range(SDXL_SIDE)] + ["FINAL"])
    return [f"IN{n:02d}" for n in range(SD_SIDE)] + ["MID"] + [f"OUT{n:02d}" for n in range(SD_SIDE)]


def block_index(path: str, sdxl: bool) -> int | None:
    """The block of a diffusers UNet module path, in sd-scripts' numbering; None outside every block."""
    match = _SIDE_PATH.match(path)
    if match:
        side, i, kind, j = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
        n = 3 * i + (2 if kind.endswith("samplers") else j)
        if side == "up":
            return 13 + n
        return 2 + n if sdxl else 1 + n  # SDXL's input_blocks.0 is conv_in, and its block 0 the time embedding
    if path.startswith("mid_block."):
        if not sdxl:
            return SD_SIDE
        rest = path[len("mid_block."):]
        return next((10 + n for prefix, n in _SDXL_MID.items() if rest.startswith(prefix)), None)
    if sdxl and path.startswith(("time_embedding.", "add_embedding.")):
        return 0
    if sdxl and path.startswith(("conv_norm_out", "conv_out")):
        return block_count(True) - 1
    return None


def _preset(text: str, count: int) -> list[float]:
    """sd-scripts' named weight curves over one side's blocks (shallow to deep for down, deep to shallow for up),
    each plus the optional "+number"."""
    name, _, offset = text.partition("+")
    base = float(offset) if offset else 0.0
    steps = [i / (count - 1) for i in range(count)]
    curve = {
        "sine": [math.sin(math.pi * s / 2) for s in steps],
        "cosine": [math.sin(math.pi * s / 2) for s in reversed(steps)],
        "linear": steps,
        "reverse_linear": list(reversed(steps)),
        "zeros": [0.0] * count,
    }[name]
    return [w + base for w in curve]


def _weights(text: str, count: int, threshold: float, listed_only: bool) -> list[float]:
    """One part's weights: the list (an empty entry is 0) or preset, cut or padded with 1.0 to ``count``, and every
    weight at or below ``threshold`` set to 0; not given: all 1.0, as sd-scripts does."""
    if not text:
        return [1.0] * count
    if "," in text or listed_only:
        values = [float(part) if part.strip() else 0.0 for part in text.split(",")]
    else:
        values = _preset(text, count)
    values = (values + [1.0] * count)[:count]
    return [w if w > threshold else 0.0 for w in values]


def lr_weights(spec: NetworkSpec, sdxl: bool) -> list[float] | None:
    """Each block's learning-rate multiplier (index as ``block_index``), or None when none is set."""
    if not spec.has_block_lr:
        return None
    side, mid = (SDXL_SIDE, SDXL_MID) if sdxl else (SD_SIDE, SD_MID)
    threshold = spec.block_lr_zero_threshold
    weights = (_weights(spec.down_lr_weight, side, threshold, False)
               + _weights(spec.mid_lr_weight, mid, threshold, True)
               + _weights(spec.up_lr_weight, side, threshold, False))
    return [1.0, *weights, 1.0] if sdxl else weights


@dataclass(frozen=True)
class BlockRanks:
    """The UNet's rank and alpha per block (index as ``block_index``), for linear/1x1 modules and 3x3 convs; a rank
    of 0 leaves the block's modules without an adapter."""

    sdxl: bool
    dims: tuple[int, ...]
    alphas: tuple[float, ...]
    conv_dims: tuple[int, ...]
    conv_alphas: tuple[float, ...]

    def of(self, path: str, conv: bool) -> tuple[int, float] | None:
        """(rank, alpha) of the module at ``path``; None when it is in no block (the network's own rank applies)."""
        index = block_index(path, self.sdxl)
        if index is None:
            return None
        if conv:
            rank, alpha = (self.conv_dims[index], self.conv_alphas[index]) if self.conv_dims else (0, 0.0)
        else:
            rank, alpha = self.dims[index], self.alphas[index]
        return rank, alpha or rank  # alpha 0 means alpha = rank, as networks.lora reads it


def _sized(key: str, values: tuple, count: int, sdxl: bool) -> tuple:
    if len(values) != count:
        model = "an SDXL" if sdxl else "an SD1/SD2"
        raise UserError(f"network_args {key} has {len(values)} values, but {model} UNet has {count} blocks: give "
                        f"one value per block")
    return values


def block_ranks(spec: NetworkSpec, rank: int, alpha: float, conv_rank: int, conv_alpha: float,
                sdxl: bool) -> BlockRanks | None:
    """sd-scripts' per-block ranks: on when block_dims or a per-block learning rate is set; block_alphas default to
    the network's alpha, conv_block_dims to conv_dim (none without it); a block whose learning-rate weight is 0 gets
    no adapter at all."""
    if not spec.per_block:
        return None
    count = block_count(sdxl)
    dims = list(_sized("block_dims", spec.block_dims, count, sdxl) if spec.block_dims else [rank] * count)
    alphas = _sized("block_alphas", spec.block_alphas, count, sdxl) if spec.block_alphas else (alpha,) * count
    if spec.conv_block_dims:
        conv_dims = list(_sized("conv_block_dims", spec.conv_block_dims, count, sdxl))
        conv_alphas = (_sized("conv_block_alphas", spec.conv_block_alphas, count, sdxl) if spec.conv_block_alphas
                       else (conv_alpha,) * count)
    elif spec.conv_dim:
        conv_dims, conv_alphas = [conv_rank] * count, (conv_alpha,) * count
    else:
        conv_dims, conv_alphas = [], ()
    for index, weight in enumerate(lr_weights(spec, sdxl) or []):
        if weight == 0:
            dims[index] = 0
            if conv_dims:
                conv_dims[index] = 0
    return BlockRanks(sdxl, tuple(dims), tuple(alphas), tuple(conv_dims), tuple(conv_alphas))
