"""``inspect``: what a LoRA file holds: family, network type, modules per part, ranks and alphas, the training
metadata, and the norm of the weight change per block (which blocks learned most)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from training.lora_files.kinds import DORA, layout_for_parts
from training.tools.deltas import flat_delta
from training.tools.lorafile import FAMILY_LABELS, LoraFile, read_lora

SHOWN_METADATA = ("ss_output_name", "ss_sd_model_name", "ss_base_model_version", "ss_v2", "ss_network_module",
                  "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_learning_rate", "ss_unet_lr",
                  "ss_text_encoder_lr", "ss_optimizer", "ss_lr_scheduler", "ss_max_train_steps", "ss_steps",
                  "ss_epoch", "ss_num_train_images", "ss_resolution", "ss_mixed_precision", "ss_seed",
                  "ss_training_started_at", "ss_training_finished_at", "ss_training_comment", "modelspec.title",
                  "sshs_model_hash", "loraforge_merged_loras", "loraforge_extract")
BAR = 30


def part_of(name: str) -> str:
    return "UNet" if name.startswith("lora_unet_") else f"TE ({name.split('_')[1]})"


def block_of(name: str) -> str:
    """The block a module belongs to, for the norm table: UNet down/mid/up blocks in either naming, TE layers."""
    m = re.match(r"^lora_unet_(input_blocks_\d+|middle_block|output_blocks_\d+|down_blocks_\d+|mid_block|"
                 r"up_blocks_\d+)", name)
    if m:
        return f"unet {m.group(1)}"
    m = re.match(r"^(lora_te\d?)_(?:text_model_)?encoder_layers_(\d+)_", name)
    if m:
        return f"{m.group(1)} layer {m.group(2)}"
    return f"{part_of(name).lower()} other"


def block_order(block: str) -> tuple:
    """TE before UNet; down/input, mid, up/output; numbers in order."""
    numbers = [int(n) for n in re.findall(r"\d+", block.split(" ", 1)[-1])]
    stage = 0 if "te" in block.split(" ")[0] else 1 + next(
        (i for i, word in enumerate(("input", "down", "middle", "mid", "output", "up")) if word in block), 6) // 2
    return (stage, block.split(" ")[0], numbers)


def whole(tensors: dict) -> bool:
    """A module with every part its type needs (half a module changes nothing; the summary counts it)."""
    layout = layout_for_parts(tensors)
    return layout is not None and not layout.missing(tensors)


def block_norms(lora: LoraFile, progress=None) -> dict[str, float]:
    """Frobenius norm of the change per block. DoRA's magnitude rescaling needs the base weights, so a DoRA module
    counts its low-rank part only. ``progress(done, total, what)`` is called per module."""
    squares: dict[str, float] = defaultdict(float)
    for done, (name, tensors) in enumerate(lora.modules.items(), 1):
        if progress:
            progress(done, len(lora.modules), "modules")
        if not whole(tensors):
            continue
        low_rank = {part: tensor for part, tensor in tensors.items() if part != DORA}
        squares[block_of(name)] += float(flat_delta(name, low_rank, lora.family)[0].pow(2).sum())
    return {block: math.sqrt(squares[block]) for block in sorted(squares, key=block_order)}


def module_rank(tensors: dict) -> int | str:
    """The rank loaders read for the module's type; "full" for a LoKr with both factors whole."""
    layout = layout_for_parts(tensors)
    rank = layout.rank(tensors) if layout else None
    return "full" if rank is None else rank


def inspect(path: Path, log=print, progress=None) -> dict:
    """``progress(done, total, what)``, when given, is called per module of the block norms (the UI's bar)."""
    lora = read_lora(path)
    kind = lora.network_type
    family = lora.family
    parts = Counter(part_of(name) for name in lora.modules)
    log(f"file:     {lora.path}")
    log(f"family:   {FAMILY_LABELS.get(family or '', 'unknown (neither the metadata nor the keys tell)')}")
    log(f"network:  {kind}, {len(lora.modules)} modules ({', '.join(f'{p}: {n}' for p, n in sorted(parts.items()))})")
    halves = sorted(name for name, t in lora.modules.items() if not whole(t))
    if halves:
        log(f"broken:   {len(halves)} module(s) lack a part of their type, e.g. {halves[0]}")
    complete = [lora.modules[name] for name in lora.modules if name not in halves]
    ranks = Counter(module_rank(t) for t in complete)
    alphas = Counter(round(float(t["alpha"]), 6) for t in complete if "alpha" in t)
    if ranks:
        log(f"ranks:    {', '.join(f'{r} x{n}' for r, n in sorted(ranks.items(), key=lambda item: str(item[0])))}")
    if alphas:
        log(f"alphas:   {', '.join(f'{a:g} x{n}' for a, n in sorted(alphas.items()))}")
    shown = {k: lora.metadata[k] for k in SHOWN_METADATA if k in lora.metadata}
    log(f"metadata: {len(lora.metadata)} keys" + ("" if shown else " (no training metadata)"))
    for key, value in shown.items():
        log(f"  {key:26s} {value if len(value) <= 100 else value[:97] + '...'}")
    norms = block_norms(lora, progress)
    if norms:
        top = max(norms.values()) or 1.0
        what = "(alpha/r) * up @ down" if kind in ("LoRA", "LoCon") else f"each {kind} module's change"
        dora = "; DoRA modules without their magnitude rescaling" if "DoRA" in kind else ""
        log(f"delta norm per block (Frobenius norm of {what} over all of the block's modules{dora}):")
        for block, norm in norms.items():
            log(f"  {block:28s} {norm:10.4g}  {'#' * round(BAR * norm / top)}")
    return {"family": family, "network": kind, "modules": dict(parts), "block_norms": norms,
            "metadata": json.loads(json.dumps(shown))}
