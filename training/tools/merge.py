"""``merge``: LoRAs added into a checkpoint, W' = W + strength * (alpha/r) * up @ down per module.

A single-file checkpoint gives a single file with the same keys, order and dtypes (unless ``--precision``); a
diffusers folder gives a diffusers folder whose UNet and text-encoder files are merged the same way and whose other
files are copied. Tensors no LoRA touches are copied byte for byte; tensors are read and written one at a time, so
memory stays near one tensor for a safetensors source (a ``.ckpt`` is a pickle and is loaded whole)."""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from training.contract.disk_space import ensure_space, folder_size
from training.contract.errors import UserError
from training.tools.checkpoint_names import Target, index_checkpoint, index_diffusers_text, index_diffusers_unet
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
from training.tools.svd import one_thread

# diffusers subfolder -> its weights file, and each text encoder's place in the family's kohya prefixes.
FOLDER_WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors",
                  "text_encoder_2": "model.safetensors"}
TEXT_ENCODER_ORDER = {"text_encoder": 0, "text_encoder_2": 1}


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


def plan_changes(index: Mapping[str, Target], model: Path, family: str, inputs: list[MergeInput],
                 unet_strength: float, te_strength: float) -> dict[tuple[str, str], list[Change]]:
    """(component, key) -> the changes to that tensor; every module of every LoRA must find its tensor, of its
    shape."""
    changes: dict[tuple[str, str], list[Change]] = defaultdict(list)
    for item in inputs:
        lora = item.lora
        mismatch = family_mismatch(lora, family)
        if mismatch:
            raise UserError(mismatch)
        missing = sorted(name for name in lora.modules if name not in index)
        if missing:
            raise UserError(f"{lora.path}: {len(missing)} of {len(lora.modules)} LoRA modules match no module of "
                            f"the {FAMILY_LABELS[family]} model {model.name}, e.g. {', '.join(missing[:3])}; is the "
                            "LoRA for this model?")
        for name in sorted(lora.modules):
            target = index[name]
            check_shape(lora, name, target)
            part_strength = unet_strength if target.part == "unet" else te_strength
            changes[(target.component, target.key)].append(Change(item, name, target, item.strength * part_strength))
    return changes


def check_shape(lora: LoraFile, name: str, target: Target) -> None:
    """A LoRA/LoCon module's size against its target, before anything is written. (LoHa/LoKr factor shapes are
    checked when their delta is computed: ``module_delta`` refuses a delta that does not fit the weight.)"""
    if "lora_down.weight" not in lora.modules[name]:
        return
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
        try:
            delta = module_delta(change.source.lora.modules[change.name], view).reshape(view.shape)
        except RuntimeError as err:  # factors whose product does not fit this weight
            raise UserError(f"{change.source.lora.path}: module {change.name} does not fit the checkpoint's weight "
                            f"{list(view.shape)} ({str(err).splitlines()[0]}); the LoRA is for another model") from None
        view.add_(delta, alpha=change.strength)
    return weight.to(dtype)


def file_entries(checkpoint: Checkpoint, changes: Mapping[str, list[Change]], precision: str | None,
                 progress=None) -> list[Entry]:
    """The output file's tensors in the source's order: merged where changed, else as they are (or cast).
    ``progress(done, total, what)``, when given, is called as each changed tensor is merged (the UI's bar)."""
    want = DTYPES[PRECISIONS[precision]] if precision else None
    entries = []
    merged = [0]

    def merged_and_counted(key: str, dtype: torch.dtype) -> torch.Tensor:
        tensor = merged_tensor(checkpoint, key, changes[key], dtype)
        merged[0] += 1
        if progress:
            progress(merged[0], len(changes), "tensors")
        return tensor

    for key in checkpoint.shapes:
        if key not in changes:
            entries.append(checkpoint.entry(key, want))
            continue
        dtype = want or checkpoint.dtypes[key]
        entries.append(Entry(key, dtype, checkpoint.shapes[key], tensor_writer(
            lambda k=key, d=TORCH_DTYPES[dtype]: merged_and_counted(k, d))))
    return entries


def merged_metadata(metadata: Mapping[str, str], inputs: list[MergeInput], unet_strength: float,
                    te_strength: float) -> dict[str, str]:
    return {**metadata, "loraforge_merged_loras": json_text([
        {"file": item.lora.path.name, "strength": item.strength, "unet_strength": unet_strength,
         "te_strength": te_strength, "sshs_model_hash": item.lora.metadata.get("sshs_model_hash", "")}
        for item in inputs])}


def read_inputs(loras: list[tuple[Path, float]]) -> list[MergeInput]:
    inputs = [MergeInput(read_lora(path), strength) for path, strength in loras]
    for item in inputs:
        require_lora(item.lora, "merge", any_type=True)
    return inputs


def merge(model: Path, loras: list[tuple[Path, float]], out: Path, unet_strength: float = 1.0,
          te_strength: float = 1.0, precision: str | None = None, force: bool = False, log=print,
          progress=None) -> dict:
    """``progress(done, total, what)``, when given, is called as each changed tensor is merged."""
    if Path(model).is_dir():
        return merge_folder(model, loras, out, unet_strength, te_strength, precision, force, log, progress)
    check_output(out, [model, *(p for p, _ in loras)], force)
    inputs = read_inputs(loras)
    checkpoint = open_checkpoint(model)
    family = detect_family(checkpoint)
    index = index_checkpoint(checkpoint.shapes, family)
    changes = {key: c for (_, key), c in plan_changes(index, checkpoint.path, family, inputs, unet_strength,
                                                     te_strength).items()}
    entries = file_entries(checkpoint, changes, precision, progress)
    touched = sum(len(v) for v in changes.values())
    log(f"{FAMILY_LABELS[family]} checkpoint {checkpoint.path.name}: {touched} LoRA modules into {len(changes)} "
        f"of {len(entries)} tensors")
    metadata = merged_metadata(checkpoint.metadata, inputs, unet_strength, te_strength)
    with one_thread():
        size = write_stream(Path(out), entries, metadata, f"the merged checkpoint {Path(out).name}")
    log(f"wrote {out} ({size / 1e9:.2f} GB)")
    return {"family": family, "tensors_changed": len(changes), "modules": touched}


def folder_parts(folder: Path, family: str) -> dict[str, tuple[Checkpoint, dict[str, Target]]]:
    """The UNet and text-encoder weight files of a diffusers folder, each opened and indexed."""
    from training.models.families import FAMILIES

    prefixes = FAMILIES[family].te_prefixes
    parts = {}
    for component, file_name in FOLDER_WEIGHTS.items():
        if not (folder / component).is_dir():
            continue
        path = folder / component / file_name
        if not path.is_file():
            raise UserError(f"{folder / component}: has no {file_name}; merge reads unsharded .safetensors weights "
                            "(save the model with safe_serialization and without a max_shard_size)")
        checkpoint = open_checkpoint(path)
        if component == "unet":
            config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
            index = index_diffusers_unet(checkpoint.shapes, family, config)
        else:
            index = index_diffusers_text(checkpoint.shapes, prefixes[TEXT_ENCODER_ORDER[component]], component)
        parts[component] = (checkpoint, index)
    return parts


def merge_folder(model: Path, loras: list[tuple[Path, float]], out: Path, unet_strength: float, te_strength: float,
                 precision: str | None, force: bool, log=print, progress=None) -> dict:
    from training.models.detect import family_from_folder

    model, out = Path(model), Path(out)
    check_output(out, [model, *(p for p, _ in loras)], force, suffix=None)
    inputs = read_inputs(loras)
    family = family_from_folder(model)
    parts = folder_parts(model, family)
    index = {name: target for _, part_index in parts.values() for name, target in part_index.items()}
    changes = plan_changes(index, model, family, inputs, unet_strength, te_strength)
    ensure_space(out.parent, f"the merged model {out.name}", folder_size(model))
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        copy_folder(model, tmp, skip={f"{c}/{FOLDER_WEIGHTS[c]}" for c in parts})
        for component, (checkpoint, _) in parts.items():
            mine = {key: c for (comp, key), c in changes.items() if comp == component}
            metadata = merged_metadata(checkpoint.metadata, inputs, unet_strength, te_strength)
            with one_thread():
                write_stream(tmp / component / FOLDER_WEIGHTS[component],
                             file_entries(checkpoint, mine, precision, progress), metadata,
                             f"the merged {component} of {out.name}")
        replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{FAMILY_LABELS[family]} diffusers model {model.name}: {sum(len(v) for v in changes.values())} LoRA modules "
        f"into {len(changes)} tensors; wrote {out}")
    return {"family": family, "tensors_changed": len(changes)}


def copy_folder(source: Path, target: Path, skip: set[str]) -> None:
    """Everything but the weight files merge writes itself."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if path.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        elif relative not in skip:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)


def replace_folder(complete: Path, out: Path) -> None:
    """The complete folder takes the output's name; an older one (--force) is removed only after."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(complete, out)
    shutil.rmtree(old, ignore_errors=True)
