"""``extract``: the LoRA of a fine-tuned checkpoint against its base, by SVD of each module's weight difference.

The modules are kohya's LoRA targets: the UNet's transformer blocks (attention, feed-forward, proj_in/out) and the
text encoders' attention and MLP; with ``--conv-rank`` also the UNet's resnet and sampler convs (LoCon). As in
kohya's extract_lora_from_models.py: alpha = rank, up = U_k S_k and down = Vh_k, both clamped to +-(the
``--clamp-quantile`` of their signed values; 1 turns the clamp off), text encoders left out when no weight differs
by more than ``--min-diff``. Modules whose weights are identical are left out (kohya writes them as zeros)."""

from __future__ import annotations

from pathlib import Path

import torch

from training.contract.errors import UserError
from training.tools.checkpoint_names import Target, index_checkpoint
from training.tools.deltas import ALPHA, DOWN, UP
from training.tools.lorafile import FAMILY_LABELS, check_output, family_metadata, json_text, network_metadata, save
from training.tools.merge import detect_family
from training.tools.source import Checkpoint, open_checkpoint
from training.tools.svd import Factors, kept_share, singular_decomposition

LINEAR_KINDS = ("transformer", "text")


def targets(checkpoint: Checkpoint, family: str, convs: bool) -> list[Target]:
    """Each targeted module once, under its canonical name."""
    kinds = (*LINEAR_KINDS, "resnet") if convs else LINEAR_KINDS
    unique = {t.canonical: t for t in index_checkpoint(checkpoint.shapes, family).values() if t.kind in kinds}
    return [unique[name] for name in sorted(unique)]


def difference(base: Checkpoint, tuned: Checkpoint, target: Target) -> torch.Tensor:
    def weight(checkpoint: Checkpoint) -> torch.Tensor:
        tensor = checkpoint.tensor(target.key).float()
        return tensor if target.rows is None else tensor[target.rows[0]:target.rows[1]]
    return weight(tuned) - weight(base)


def clamped_factors(diff: torch.Tensor, rank: int, quantile: float) -> Factors:
    """kohya's extraction of one module: SVD, rank capped by both sides of the weight, factors clamped."""
    out_dim, in_dim = diff.shape[:2]
    rank = min(rank, out_dim, in_dim)
    u, singular, vh = singular_decomposition(diff.reshape(out_dim, -1))
    up, down = u[:, :rank] * singular[:rank], vh[:rank]
    if quantile < 1.0:  # kohya's clamp: the quantile of the signed values, applied to both signs
        limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]), quantile)
        up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    return Factors(up, down, singular, kept_share(singular, rank))


def extract(base_path: Path, tuned_path: Path, out: Path, rank: int, conv_rank: int | None = None,
            clamp_quantile: float = 0.99, min_diff: float = 0.01, force: bool = False, log=print, progress=None
            ) -> dict[str, dict[str, torch.Tensor]]:
    """``progress(done, total, what)``, when given, is called after each module (the UI's progress bar)."""
    check_output(out, [base_path, tuned_path], force)
    base, tuned = open_checkpoint(base_path), open_checkpoint(tuned_path)
    family, tuned_family = detect_family(base), detect_family(tuned)
    if family != tuned_family:
        raise UserError(f"{tuned_path}: an {FAMILY_LABELS[tuned_family]} checkpoint, but the base {base_path.name} is "
                        f"{FAMILY_LABELS[family]}; extract needs the model and the base it was fine-tuned from")
    chosen = targets(tuned, family, conv_rank is not None)
    differ = [t.key for t in chosen if base.shapes.get(t.key) != tuned.shapes[t.key]]
    if differ:
        raise UserError(f"{base_path}: {len(differ)} weights are missing or shaped differently than in "
                        f"{tuned_path.name}, e.g. {differ[0]}; is it the model {tuned_path.name} was tuned from?")
    te_change = max((float(difference(base, tuned, t).abs().max()) for t in chosen if t.part != "unet"), default=0.0)
    if te_change <= min_diff:
        log(f"text encoders differ by at most {te_change:.3g} (<= --min-diff {min_diff:g}): UNet only")
        chosen = [t for t in chosen if t.part == "unet"]
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for done, target in enumerate(chosen, 1):  # one module's difference in memory at a time
        if progress:
            progress(done, len(chosen), "modules")
        diff = difference(base, tuned, target)
        if not bool(diff.any()):
            continue
        kernel = tuple(diff.shape[2:])
        wanted = conv_rank if conv_rank and kernel and kernel != (1, 1) else rank
        factors = clamped_factors(diff, wanted, clamp_quantile)
        down = factors.down.reshape(factors.rank, *diff.shape[1:])
        up = factors.up.reshape(diff.shape[0], factors.rank, *([1, 1] if kernel else []))
        modules[target.canonical] = {DOWN: down, UP: up, ALPHA: torch.tensor(float(factors.rank))}
        log(f"{target.canonical:90s} rank {factors.rank:4d}  Frobenius norm kept {factors.kept:.1%}")
    if not modules:
        raise UserError(f"{tuned_path}: no targeted weight differs from {base_path.name}; nothing to extract")
    metadata = {**family_metadata(family), **network_metadata(modules, dynamic=False),
                "ss_training_comment": f"extracted by LoRA Forge from {tuned_path.name} minus {base_path.name}",
                "ss_sd_model_name": base_path.name,
                "loraforge_extract": json_text({"base": base_path.name, "tuned": tuned_path.name, "rank": rank,
                                                "conv_rank": conv_rank, "clamp_quantile": clamp_quantile,
                                                "min_diff": min_diff})}
    save(out, modules, metadata)
    log(f"wrote {out}: {len(modules)} modules")
    return modules
