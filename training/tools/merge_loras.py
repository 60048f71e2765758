"""``merge-loras``: several LoRAs as one. By default exactly: per module the factors are stacked (the ranks add up)
with each input's strength and alpha/r folded into its up weights, so the merged delta is the sum of the inputs'
deltas. With ``--rank N`` each module's summed delta is re-factorised by SVD to rank N and the error is printed; that
is also how LoHa and LoKr inputs merge (their changes are not up @ down products, so they cannot be stacked): the
result is a LoRA/LoCon."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from training.contract.errors import UserError
from training.tools.deltas import ALPHA, DOWN, UP, flat_delta, module_scale
from training.tools.lorafile import (
    FAMILY_LABELS,
    LoraFile,
    check_output,
    family_metadata,
    json_text,
    network_metadata,
    read_lora,
    require_lora,
    save,
)
from training.tools.svd import low_rank_decomposition, one_thread, singular_decomposition, to_module, truncate


def common_family(loras: list[LoraFile]) -> str | None:
    known = {lora.family for lora in loras} - {None}
    if len(known) > 1:
        labels = ", ".join(f"{lora.path.name} is {FAMILY_LABELS.get(lora.family, 'unknown')}" for lora in loras)
        raise UserError(f"the LoRAs are for different model families ({labels}); merge LoRAs of one family")
    return known.pop() if known else None


def stacked_factors(loras: list[tuple[LoraFile, float]], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of one module with every input stacked along the rank: up_i carries strength_i * alpha_i/r_i."""
    ups, downs = [], []
    for lora, strength in loras:
        tensors = lora.modules.get(name)
        if tensors is None:
            continue
        if downs and tensors[DOWN].shape[1:] != downs[0].shape[1:]:
            raise UserError(f"{lora.path}: module {name} has down {list(tensors[DOWN].shape)}, another input has "
                            f"{list(downs[0].shape)}; the LoRAs are for different models")
        ups.append(tensors[UP].float() * (strength * module_scale(tensors)))
        downs.append(tensors[DOWN].float())
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def summed_delta(loras: list[tuple[LoraFile, float]], name: str, family: str | None
                 ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The sum of the inputs' changes of one module as an [out, in*kh*kw] matrix, and the layer's kernel."""
    total, kernel = None, None
    for lora, strength in loras:
        if name not in lora.modules:
            continue
        matrix, its_kernel = flat_delta(name, lora.modules[name], family)
        if total is not None and (matrix.shape != total.shape or its_kernel != kernel):
            raise UserError(f"{lora.path}: module {name} changes a {list(matrix.shape)} weight, another input a "
                            f"{list(total.shape)} one; the LoRAs are for different models")
        total = matrix * strength if total is None else total + matrix * strength
        kernel = its_kernel
    assert total is not None and kernel is not None
    return total, kernel


def merge_loras(specs: list[tuple[Path, float]], out: Path, rank: int | None = None, force: bool = False,
                log=print, progress=None) -> dict[str, dict[str, torch.Tensor]]:
    """``progress(done, total, what)``, when given, is called after each module (the UI's progress bar)."""
    if len(specs) < 2:
        raise UserError("merge-loras needs two or more --lora files")
    check_output(out, [p for p, _ in specs], force)
    loras = [(read_lora(path), strength) for path, strength in specs]
    for lora, _ in loras:
        require_lora(lora, "merge-loras", any_type=True, needs_base_ok=False)
    stackable = all(lora.network_type in ("LoRA", "LoCon") for lora, _ in loras)
    if not stackable and rank is None:
        kinds = ", ".join(f"{lora.path.name} is {lora.network_type}" for lora, _ in loras)
        raise UserError(f"merge-loras of LoHa/LoKr files re-factorises their summed change by SVD ({kinds}): "
                        "give --rank N (e.g. the largest input rank) for the merged LoRA")
    family = common_family([lora for lora, _ in loras])
    names = sorted({name for lora, _ in loras for name in lora.modules})
    modules: dict[str, dict[str, torch.Tensor]] = {}
    dropped_sq = total_sq = 0.0
    with one_thread():
        for done, name in enumerate(names, 1):
            if progress:
                progress(done, len(names), "modules")
            if stackable:
                up, down = stacked_factors(loras, name)
                if rank is None:
                    modules[name] = {DOWN: down, UP: up, ALPHA: torch.tensor(float(down.shape[0]))}
                    continue
                kernel = tuple(down.shape[2:])
                svd = low_rank_decomposition(up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1))
            else:
                matrix, kernel = summed_delta(loras, name, family)
                svd = singular_decomposition(matrix)
            factors = truncate(*svd, rank)
            new_down, new_up = to_module(factors, kernel)
            modules[name] = {DOWN: new_down, UP: new_up, ALPHA: torch.tensor(float(factors.rank))}
            dropped_sq += factors.error ** 2
            total_sq += float(factors.singular.pow(2).sum())
            log(f"{name:90s} rank {factors.rank:4d}  error {factors.error:.4g}  kept {factors.kept:.1%}")
    if rank is not None:
        share = 1.0 if total_sq == 0 else math.sqrt(max(total_sq - dropped_sq, 0.0) / total_sq)
        log(f"overall: error {math.sqrt(dropped_sq):.4g} (Frobenius), {share:.2%} of the summed delta's norm kept")
    how = "exact (stacked)" if rank is None else f"SVD to rank {rank}"
    metadata = {**family_metadata(family), **network_metadata(modules, dynamic=False),
                "ss_training_comment": f"merged by LoRA Forge, {how}",
                "loraforge_merged_loras": json_text([{"file": lora.path.name, "strength": s,
                                                      "sshs_model_hash": lora.metadata.get("sshs_model_hash", "")}
                                                     for lora, s in loras])}
    save(out, modules, metadata)
    log(f"wrote {out}: {len(modules)} modules, {how}")
    return modules
