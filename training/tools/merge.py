"""``merge``: LoRAs added into a single-file checkpoint, W' = W + strength * (alpha/r) * up @ down per module.

The output keeps the checkpoint's keys, order and dtypes (unless ``--precision``); tensors no LoRA touches are
copied byte for byte; tensors are read and written one at a time, so memory stays near one tensor for a
safetensors source (a ``.ckpt`` is a pickle and is loaded whole)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from training.contract.errors import UserError
from training.tools.checkpoint_names import Target, index_checkpoint
from training.tools.deltas import module_delta
from training.tools.lorafile import (
    FAMILY_LABELS,
    LoraFile,
    check_output,
    family_mismatch,
    json_text,
    read_lora,
    require_lora,
)
from training.tools.source import PRECISIONS, TORCH_DTYPES, Checkpoint, open_checkpoint
from training.tools.stream import DTYPES, Entry, tensor_writer, write_stream


@dataclass(frozen=True)
class MergeInput:
    lora: LoraFile
    strength: float


@dataclass(frozen=True)
class Change:
    """One LoRA module's delta to add to a checkpoint tensor (or to its q/k/v rows)."""

    source: MergeInput
    name: str
    target: Target
    strength: float


def detect_family(checkpoint: Checkpoint) -> str:
    from training.models.detect import family_from_shapes

    family = family_from_shapes(checkpoint.shapes)
    if family is None:
        raise UserError(f"{checkpoint.path}: not a Stable Diffusion 1.x/2.x/XL checkpoint in the original layout "
                        "(no model.diffusion_model. or text-encoder keys)")
    return family


def plan_changes(checkpoint: Checkpoint, family: str, inputs: list[MergeInput], unet_strength: float,
                 te_strength: float) -> dict[str, list[Change]]:
    """Checkpoint key -> the changes to it; every module of every LoRA must find its tensor, of its shape."""
    index = index_checkpoint(checkpoint.shapes, family)
    changes: dict[str, list[Change]] = defaultdict(list)
    for item in inputs:
        lora = item.lora
        mismatch = family_mismatch(lora, family)
        if mismatch:
            raise UserError(mismatch)
        missing = sorted(name for name in lora.modules if name not in index)
        if missing:
            raise UserError(f"{lora.path}: {len(missing)} of {len(lora.modules)} LoRA modules match no module of "
                            f"the {FAMILY_LABELS[family]} checkpoint {checkpoint.path.name}, e.g. "
                            f"{', '.join(missing[:3])}; is the LoRA for this model?")
        for name in sorted(lora.modules):
            target = index[name]
            check_shape(lora, name, target)
            part_strength = unet_strength if target.part == "unet" else te_strength
            changes[target.key].append(Change(item, name, target, item.strength * part_strength))
    return changes


def check_shape(lora: LoraFile, name: str, target: Target) -> None:
    down, up = lora.modules[name]["lora_down.weight"], lora.modules[name]["lora_up.weight"]
    numel = up.shape[0] * (down[0].numel() if down.ndim else 0)
    want = target.shape
    if up.shape[0] != want[0] or numel != int(torch.Size(want).numel()):
        raise UserError(f"{lora.path}: module {name} is {up.shape[0]}x{list(down.shape[1:])} but the checkpoint's "
                        f"weight is {list(want)}; the LoRA is for another model")


def merged_tensor(checkpoint: Checkpoint, key: str, changes: list[Change], dtype: torch.dtype) -> torch.Tensor:
    """W + sum of strength * delta in float32, cast to the output dtype."""
    weight = checkpoint.tensor(key).float().clone()
    for change in changes:
        rows = change.target.rows
        view = weight if rows is None else weight[rows[0]:rows[1]]
        delta = module_delta(change.source.lora.modules[change.name]).reshape(view.shape)
        view.add_(delta, alpha=change.strength)
    return weight.to(dtype)


def merge(model: Path, loras: list[tuple[Path, float]], out: Path, unet_strength: float = 1.0,
          te_strength: float = 1.0, precision: str | None = None, force: bool = False, log=print) -> dict:
    check_output(out, [model, *(p for p, _ in loras)], force)
    inputs = [MergeInput(read_lora(path), strength) for path, strength in loras]
    for item in inputs:
        require_lora(item.lora, "merge")
    checkpoint = open_checkpoint(model)
    family = detect_family(checkpoint)
    changes = plan_changes(checkpoint, family, inputs, unet_strength, te_strength)
    want = DTYPES[PRECISIONS[precision]] if precision else None
    entries = []
    for key in checkpoint.shapes:
        if key not in changes:
            entries.append(checkpoint.entry(key, want))
            continue
        dtype = want or checkpoint.dtypes[key]
        entries.append(Entry(key, dtype, checkpoint.shapes[key], tensor_writer(
            lambda k=key, d=TORCH_DTYPES[dtype]: merged_tensor(checkpoint, k, changes[k], d))))
    metadata = {**checkpoint.metadata, "loraforge_merged_loras": json_text([
        {"file": item.lora.path.name, "strength": item.strength, "unet_strength": unet_strength,
         "te_strength": te_strength, "sshs_model_hash": item.lora.metadata.get("sshs_model_hash", "")}
        for item in inputs])}
    touched = sum(len(v) for v in changes.values())
    log(f"{FAMILY_LABELS[family]} checkpoint {checkpoint.path.name}: {touched} LoRA modules into {len(changes)} "
        f"of {len(entries)} tensors")
    size = write_stream(Path(out), entries, metadata, f"the merged checkpoint {Path(out).name}")
    log(f"wrote {out} ({size / 1e9:.2f} GB)")
    return {"family": family, "tensors_changed": len(changes), "modules": touched}
