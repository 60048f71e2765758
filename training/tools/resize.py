"""``resize``: a LoRA re-factorised by SVD to a lower rank, fixed or chosen per module by kohya's dynamic rules.
Each module keeps its scale: the new alpha is (old alpha / old rank) * new rank, as kohya's resize_lora.py does.
A LoHa or LoKr file becomes a LoRA/LoCon: each module's whole change is factorised (alpha = the new rank), which is
also how to take one to a loader that reads only LoRA."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from training.lora_files.kinds import layout_for_parts
from training.tools.deltas import ALPHA, DOWN, UP, flat_delta, module_scale
from training.tools.lorafile import check_output, network_metadata, read_lora, require_lora, save
from training.tools.svd import (
    dynamic_rank,
    low_rank_decomposition,
    one_thread,
    singular_decomposition,
    to_module,
    truncate,
)


def module_rank(singular: torch.Tensor, old_rank: int, rank: int | None, dynamic: tuple[str, float] | None) -> int:
    """The new rank: the dynamic rule's, capped by ``rank`` when given; never above the module's own rank."""
    new = dynamic_rank(singular, *dynamic) if dynamic else rank
    if dynamic and rank is not None:
        new = min(new, rank)
    return max(1, min(int(new), old_rank))


@dataclass
class Resized:
    tensors: dict[str, torch.Tensor]
    old_rank: int
    kept: float        # share of this module's Frobenius norm kept
    total_sq: float    # squared Frobenius norm of its delta (with its scale)


def resize_module(name: str, tensors: dict[str, torch.Tensor], family: str | None, rank: int | None,
                  dynamic: tuple[str, float] | None, conv_rank: int | None) -> Resized:
    layout = layout_for_parts(tensors)
    if layout is not None and layout.algo == "lora":
        down, up = tensors[DOWN].float(), tensors[UP].float()
        old, kernel, scale = down.shape[0], tuple(down.shape[2:]), module_scale(tensors)
        u, singular, vh = low_rank_decomposition(up.reshape(up.shape[0], old), down.reshape(old, -1))
        cap = old
    else:  # LoHa / LoKr: the change itself (its rank can exceed the file's r: LoHa's is up to r squared)
        matrix, kernel = flat_delta(name, tensors, family)
        u, singular, vh = singular_decomposition(matrix)
        old, scale, cap = (layout.rank(tensors) or 0) if layout else 0, 1.0, min(matrix.shape)
    wanted = conv_rank if conv_rank and kernel and kernel != (1, 1) else rank
    factors = truncate(u, singular, vh, module_rank(singular, cap, wanted, dynamic))
    new_down, new_up = to_module(factors, kernel)
    return Resized({DOWN: new_down, UP: new_up, ALPHA: torch.tensor(scale * factors.rank)}, old, factors.kept,
                   scale**2 * float(singular.pow(2).sum()))


def resize(path: Path, out: Path, rank: int | None = None, dynamic: tuple[str, float] | None = None,
           conv_rank: int | None = None, force: bool = False, log=print,
           progress=None) -> dict[str, dict[str, torch.Tensor]]:
    """``progress(done, total, what)``, when given, is called after each module (the UI's progress bar)."""
    check_output(out, [path], force)
    lora = read_lora(path)
    require_lora(lora, "resize", any_type=True, needs_base_ok=False)
    modules: dict[str, dict[str, torch.Tensor]] = {}
    kept_sq = total_sq = 0.0
    results: dict[str, Resized] = {}
    with one_thread():
        for name in sorted(lora.modules):
            results[name] = resize_module(name, lora.modules[name], lora.family, rank, dynamic, conv_rank)
            if progress:
                progress(len(results), len(lora.modules), "modules")
    for name, result in results.items():
        modules[name] = result.tensors
        total_sq += result.total_sq
        kept_sq += result.total_sq * result.kept**2
        log(f"{name:90s} rank {result.old_rank:4d} -> {result.tensors[DOWN].shape[0]:4d}  Frobenius norm kept "
            f"{result.kept:.1%}")
    overall = 1.0 if total_sq == 0 else math.sqrt(kept_sq / total_sq)
    log(f"overall: {overall:.2%} of the LoRA's Frobenius norm kept")
    old_dim = max(result.old_rank for result in results.values())
    save(out, modules, resized_metadata(lora.metadata, modules, old_dim, rank, dynamic))
    log(f"wrote {out}: {len(modules)} modules")
    return modules


def resized_metadata(metadata: dict[str, str], modules: dict, old_dim: int, rank: int | None,
                     dynamic: tuple[str, float] | None) -> dict[str, str]:
    """The input's metadata with kohya's resize notes: the comment says from what, the network facts are new."""
    comment = metadata.get("ss_training_comment", "")
    if dynamic:
        note = f"Dynamic resize with {dynamic[0]}: {dynamic[1]:g} from {old_dim}"
    else:
        note = f"dimension is resized from {old_dim} to {rank}"
    # The hashes describe the old tensors; the network args the old type (a LoHa's algo): network_metadata restates
    # what the new file is.
    kept = {k: v for k, v in metadata.items() if not k.startswith("sshs_") and k != "ss_network_args"}
    return {**kept, **network_metadata(modules, dynamic=True), "ss_training_comment": f"{note}; {comment}"}
