"""Which modules of a UNet or text encoder get an adapter, for a NetworkSpec: one pure, torch-free function.

The engine reads ``ModuleInfo`` from the real model (``training.networks.build.module_infos``); the size estimate
reads them from the module tables beside the bundled configs (``assets/models/<family>/modules.json``, written by
``python -m training.networks.tables``). Both call ``select_targets``, so the modules trained and the modules
counted can never differ.

Rules, by preset:

- ``kohya``, sd-scripts' ``networks.lora``: every ``Linear`` and 1x1 ``Conv2d`` inside a UNet
  ``Transformer2DModel``, and inside the text encoders' ``CLIPAttention`` and ``CLIPMLP``. With ``conv_dim`` the UNet
  targets grow by ``ResnetBlock2D``, ``Downsample2D`` and ``Upsample2D``: their 3x3 convs at the conv rank, their
  Linear (the resnets' ``time_emb_proj``) and 1x1 convs (``conv_shortcut``) at the linear rank. Per-block ranks
  (``block_dims`` and kin, ``training.networks.blocks``) change a UNet module's rank by its block, and rank 0
  removes it (``trained_targets``).
- LyCORIS's presets, as its kohya wrapper selects them: every Linear and 1x1 conv inside a target class, at the
  linear rank, whether or not the preset enables convs; a conv with a larger kernel at the conv rank only when the
  preset enables convs (``full``). ``full`` also names ``conv_in``, ``conv_out`` and the time embedding's Linears.
  LyCORIS's class list has ``TimestepEmbedding`` in every UNet preset but ``attn-only``, so the time embedding (and
  SDXL's ``add_embedding``, the same class) is trained by those; LyCORIS selects it twice in ``full`` (by class and
  by name), counted once here. ``attn-only`` names sd-scripts' attention class ``CrossAttention``, which diffusers
  calls ``Attention``: the same layer (to_q, to_k, to_v, to_out), so it is matched under both names.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from training.contract.network import NetworkSpec
from training.networks.blocks import BlockRanks, block_ranks

ModuleKind = Literal["linear", "conv1x1", "conv3x3"]  # conv3x3: any Conv2d whose kernel is larger than 1x1
Part = Literal["unet", "text_encoder"]
TABLE_FILE = "modules.json"  # beside a bundled config folder's parts, written by training.networks.tables


@dataclass(frozen=True)
class ModuleInfo:
    """One Linear or Conv2d of a model: where it is, its shape, and the classes of the modules around it."""

    path: str
    kind: ModuleKind
    in_features: int  # in_channels for a conv
    out_features: int
    kernel: int = 1  # kernel height (SD's convs are square)
    blocks: tuple[str, ...] = ()  # class names of every enclosing module, outermost first


@dataclass(frozen=True)
class Target:
    """A module that gets an adapter; ``conv_rank`` when it takes conv_dim/conv_alpha instead of the linear ones."""

    path: str
    conv_rank: bool
    module: ModuleInfo


@dataclass(frozen=True)
class Ranks:
    """The linear and conv rank/alpha the run trains with; networks.lora's per-block ranks of the UNet (``blocks``),
    or each module's own, read from a file (``modules``: {module path: (rank, alpha)}, one model's)."""

    rank: int
    alpha: float
    conv_rank: int
    conv_alpha: float
    blocks: BlockRanks | None = None
    modules: Mapping[str, tuple[int, float]] | None = None

    @classmethod
    def of(cls, spec: NetworkSpec, network_dim: int, network_alpha: float, sdxl: bool = False) -> Ranks:
        """``sdxl``: the UNet's blocks are numbered as SDXL's (only per-block settings need it)."""
        alpha, conv_rank = network_alpha or network_dim, spec.conv_dim or network_dim
        conv_alpha = spec.conv_alpha or spec.conv_dim or network_dim
        return cls(network_dim, alpha, conv_rank, conv_alpha,
                   block_ranks(spec, network_dim, alpha, conv_rank, conv_alpha, sdxl))

    def of_target(self, target: Target, part: Part) -> tuple[int, float]:
        """The (rank, alpha) ``target`` trains at; rank 0: no adapter there."""
        if self.modules is not None:
            return self.modules.get(target.path, (0, 0.0))
        if self.blocks is not None and part == "unet":
            by_block = self.blocks.of(target.path, target.conv_rank)
            if by_block is not None:
                return by_block
        return (self.conv_rank, self.conv_alpha) if target.conv_rank else (self.rank, self.alpha)


KOHYA_UNET = ("Transformer2DModel",)
KOHYA_UNET_CONV = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
CLIP_ATTENTION = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2")  # one layer, per attention backend
CLIP_BLOCKS = (*CLIP_ATTENTION, "CLIPMLP")
ATTENTION = ("CrossAttention", "SelfAttention", "Attention")  # sd-scripts' names, then diffusers'


@dataclass(frozen=True)
class LycorisPreset:
    """A LyCORIS preset, reduced to the classes and names that occur in SD1/SD2/SDXL UNets and CLIP encoders."""

    unet_blocks: tuple[str, ...]
    unet_names: tuple[str, ...]
    text_blocks: tuple[str, ...]
    enable_conv: bool


_TRANSFORMER = ("Transformer2DModel", "TimestepEmbedding")
LYCORIS_PRESETS = {
    "attn-only": LycorisPreset(ATTENTION, (), CLIP_ATTENTION, False),
    "attn-mlp": LycorisPreset(_TRANSFORMER, (), CLIP_BLOCKS, False),
    "unet-transformer-only": LycorisPreset(_TRANSFORMER, (), (), False),
    "full": LycorisPreset((*_TRANSFORMER, "ResnetBlock2D", "Downsample2D", "Upsample2D"),
                          ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"),
                          CLIP_BLOCKS, True),
}


def _inside(module: ModuleInfo, classes: tuple[str, ...]) -> bool:
    return any(block in classes for block in module.blocks)


def _named(module: ModuleInfo, names: tuple[str, ...]) -> bool:
    return any(module.path == name or module.path.startswith(name + ".") for name in names)


def _kohya(spec: NetworkSpec, module: ModuleInfo, part: Part) -> Target | None:
    blocks = CLIP_BLOCKS if part == "text_encoder" else KOHYA_UNET + (KOHYA_UNET_CONV if spec.has_conv else ())
    if not _inside(module, blocks):
        return None
    if module.kind == "conv3x3":
        return Target(module.path, True, module) if spec.has_conv else None
    return Target(module.path, False, module)


def _lycoris(spec: NetworkSpec, module: ModuleInfo, part: Part) -> Target | None:
    preset = LYCORIS_PRESETS[spec.preset]
    if part == "text_encoder":
        chosen = _inside(module, preset.text_blocks)
    else:
        chosen = _inside(module, preset.unet_blocks) or _named(module, preset.unet_names)
    if not chosen:
        return None
    if module.kind == "conv3x3":
        return Target(module.path, True, module) if preset.enable_conv and spec.conv_dim else None
    return Target(module.path, False, module)


def select_targets(spec: NetworkSpec, modules: list[ModuleInfo], part: Part) -> list[Target]:
    """The modules of one model (a UNet or one text encoder) that ``spec`` puts adapters on, in model order."""
    rule = _kohya if spec.preset == "kohya" else _lycoris
    return [t for t in (rule(spec, m, part) for m in modules) if t is not None]


def trained_targets(spec: NetworkSpec, modules: list[ModuleInfo], part: Part,
                    ranks: Ranks) -> list[tuple[Target, int, float]]:
    """``select_targets`` with each module's (rank, alpha), leaving out those at rank 0 (a block sd-scripts skips,
    a module a rank-giving file does not have)."""
    ranked = [(t, *ranks.of_target(t, part)) for t in select_targets(spec, modules, part)]
    return [(t, rank, alpha) for t, rank, alpha in ranked if rank > 0]


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LoKr's split of a dimension into (m, n), m * n = dimension, as peft's LoKr layer splits it: (factor,
    dimension / factor) when ``factor`` divides the dimension, else the largest divisor m with m <= n and m <= factor
    (``factor`` -1: no limit). LyCORIS orders the first case smaller-first; the two agree whenever factor^2 <=
    dimension, as for every SD/SDXL layer with factor <= 17."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor < 0 else factor
    best = 1
    m = 1
    while m * m <= dimension:
        if dimension % m == 0 and m <= limit:
            best = m
        m += 1
    return best, dimension // best


def infos_from_table(table: dict[str, Any]) -> list[ModuleInfo]:
    """One model's ModuleInfos from its module table (``training.networks.tables.table_of``)."""
    classes = table["classes"]
    infos = []
    for path, kind, n_in, n_out, kernel in table["modules"]:
        parts = path.split(".")
        blocks = tuple(classes[".".join(parts[:depth])] for depth in range(len(parts)))
        infos.append(ModuleInfo(path, kind, n_in, n_out, kernel, blocks))
    return infos


@functools.lru_cache(maxsize=8)
def read_module_table(config_dir: Path) -> dict[str, list[ModuleInfo]]:
    """{part ("unet", "text_encoder", "text_encoder_2"): its ModuleInfos} of a bundled config folder. Read once per
    folder: the Model tab asks for the size on every change of the form. Callers must not mutate the lists."""
    table = json.loads((config_dir / TABLE_FILE).read_text(encoding="utf-8"))
    return {part: infos_from_table(content) for part, content in table.items()}
