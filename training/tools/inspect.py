"""``inspect``: what a LoRA file holds: family, network type, modules per part, ranks and alphas, the training
metadata, and the norm of the weight change per block (which blocks learned most)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from training.tools.deltas import DOWN, UP, module_delta
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


def block_norms(lora: LoraFile, progress=None) -> dict[str, float]:
    squares: dict[str, float] = defaultdict(float)
    for done, (name, tensors) in enumerate(lora.modules.items(), 1):
        if progress:
            progress(done, len(lora.modules), "modules")
        if DOWN not in tensors or UP not in tensors:  # half a module changes nothing; the summary counts it
            continue
        squares[block_of(name)] += float(module_delta(tensors).pow(2).sum())
    return {block: math.sqrt(squares[block]) for block in sorted(squares, key=block_order)}


def inspect(path: Path, log=print, progress=None) -> dict:
    """``progress(done, total, what)``, when given, is called per module of the block norms (the UI's bar)."""
    lora = read_lora(path)
    kind = lora.network_type
    family = lora.family
    parts = Counter(part_of(name) for name in lora.modules)
    log(f"file:     {lora.path}")
    log(f"family:   {FAMILY_LABELS.get(family or '', 'unknown (neither the metadata nor the keys tell)')}")
    log(f"network:  {kind}, {len(lora.modules)} modules ({', '.join(f'{p}: {n}' for p, n in sorted(parts.items()))})")
    plain = kind in ("LoRA", "LoCon")
    halves = sorted(name for name, t in lora.modules.items() if DOWN not in t or UP not in t)
    if plain and halves:
        log(f"broken:   {len(halves)} module(s) lack lora_down or lora_up, e.g. {halves[0]}")
    if plain:
        whole = [name for name in lora.modules if name not in halves]
        ranks = Counter(lora.rank(name) for name in whole)
        alphas = Counter(round(lora.alpha(name), 6) for name in whole)
        log(f"ranks:    {', '.join(f'{r} x{n}' for r, n in sorted(ranks.items()))}")
        log(f"alphas:   {', '.join(f'{a:g} x{n}' for a, n in sorted(alphas.items()))}")
    shown = {k: lora.metadata[k] for k in SHOWN_METADATA if k in lora.metadata}
    log(f"metadata: {len(lora.metadata)} keys" + ("" if shown else " (no training metadata)"))
    for key, value in shown.items():
        log(f"  {key:26s} {value if len(value) <= 100 else value[:97] + '...'}")
    norms = block_norms(lora, progress) if plain else {}
    if norms:
        top = max(norms.values()) or 1.0
        log("delta norm per block (Frobenius norm of (alpha/r) * up @ down over all of the block's modules):")
        for block, norm in norms.items():
            log(f"  {block:28s} {norm:10.4g}  {'#' * round(BAR * norm / top)}")
    elif not plain:
        log(f"delta norms: not computed for {kind} files yet")
    return {"family": family, "network": kind, "modules": dict(parts), "block_norms": norms,
            "metadata": json.loads(json.dumps(shown))}
