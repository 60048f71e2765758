"""Saving what a run produces: LoRA files (exported, then self-checked) and full training state for resume.

File and folder names come from ``training.contract.layout``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.contract.atomic import write_atomic
from training.contract.config import TrainConfig
from training.contract.disk_space import ensure_space, folder_size, no_space, ran_out_of_space
from training.contract.errors import UserError
from training.contract.layout import LORA_SUFFIX, NOISE_STATE_FILE, STATE_FILE, STATE_SUFFIX, RunLayout, lora_name
from training.contract.lora_check import SelfCheck
from training.data.dataset_config import dataset_facts
from training.lora_files.export import build_metadata, kohya_state_dict, save_lora
from training.lora_files.self_check import verify_lora

if TYPE_CHECKING:
    from training.run.parts import Trainer

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}


@dataclass
class TrainState:
    """Counters and curves that must survive a stop/resume exactly."""

    global_step: int = 0
    epoch: int = 0                 # epochs fully completed
    batch_in_epoch: int = 0        # batches consumed in the current epoch
    started_at: float = field(default_factory=time.time)
    ema: dict[str, Any] = field(default_factory=dict)
    val_history: list[list[float]] = field(default_factory=list)  # [step, loss]
    last_checkpoint: str | None = None
    batches_per_epoch: int = 0     # to notice a dataset that changed between stop and resume


def training_facts(tr: Trainer, state: TrainState) -> dict[str, Any]:
    """What the metadata needs besides the config: dataset, progress and times."""
    facts, acc = tr.facts, tr.parts.accelerator
    bucket_info = {"buckets": {str(i): {"resolution": list(b), "count": n}
                               for i, (b, n) in enumerate(sorted(facts.bucket_counts.items()))}}
    return {
        **dataset_facts(tr.cfg, facts.scan, bucket_info),  # images, reg images, tags, folders (ss_datasets)
        "num_batches_per_epoch": facts.schedule.batches_per_epoch,
        "num_epochs": facts.schedule.total_epochs,
        "epoch": tr.facts.schedule.epochs_done(state.global_step),
        "steps": state.global_step,
        "max_train_steps": facts.schedule.total_steps,
        "bucket_info": bucket_info,
        "training_started_at": state.started_at,
        "training_finished_at": time.time(),
        "mixed_precision": acc.mixed_precision,
        "session_id": int(state.started_at * 1000) % 2**32,  # one id for every file of a run, as kohya does
        "unet_lr": tr.cfg.effective_unet_lr,
        "text_encoder_lr": text_encoder_lrs(tr),
        "total_batch_size": tr.cfg.train_batch_size * acc.num_processes * tr.cfg.gradient_accumulation_steps,
    }


def text_encoder_lrs(tr: Trainer) -> float | list[float]:
    """ss_text_encoder_lr: the rate each encoder trained at (0 for a frozen one); a pair for SDXL, as kohya writes."""
    lrs = [tr.cfg.text_encoder_lrs[i] if i in tr.trained_encoders else 0.0 for i in range(len(tr.base.text_encoders))]
    return lrs[0] if len(lrs) == 1 else lrs


def save_lora_file(tr: Trainer, state: TrainState, name: str) -> tuple[Path, SelfCheck]:
    """Export the current LoRA in kohya format, then check it module by module against the base model."""
    path, acc, family = RunLayout(tr.run_dir).lora(name), tr.parts.accelerator, tr.facts.family
    unet = acc.unwrap_model(tr.parts.unet, keep_torch_compile=False)  # compiled: the names without "_orig_mod."
    # Every encoder, trained or not: the kohya prefix (lora_te1/lora_te2) follows the encoder's position.
    encoders = [acc.unwrap_model(e) for e in tr.parts.text_encoders]
    tensors = kohya_state_dict(unet, encoders, family, SAVE_DTYPES[tr.cfg.save_precision])
    config = tr.cfg.model_dump(mode="json")
    metadata = build_metadata(config, family, training_facts(tr, state), state_dict=tensors)
    save_lora(path, tensors, metadata)
    return path, verify_lora(path, family, unet, encoders)


def register_lora_only_state(accelerator) -> None:
    """Make accelerate's save_state/load_state store only the adapter weights of each model, not the frozen base
    (a few MB instead of gigabytes per save): every adapter tensor of every network type (LoRA's A/B, DoRA's
    magnitudes, LoHa's and LoKr's factors), under the model's own parameter names."""
    from safetensors.torch import load_file, save_file

    from training.networks.build import adapter_state

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            tensors = adapter_state(accelerator.unwrap_model(model, keep_torch_compile=False))
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(output_dir) / f"lora_{i}.safetensors"))
        weights.clear()

    def load_hook(models, input_dir):
        for i, model in enumerate(list(models)):
            saved = load_file(str(Path(input_dir) / f"lora_{i}.safetensors"))
            load_adapter_state(accelerator.unwrap_model(model, keep_torch_compile=False), saved, input_dir)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_adapter_state(model: torch.nn.Module, saved: dict[str, torch.Tensor], where: Any) -> None:
    """Copy a saved adapter state into ``model``; the saved tensors and the model's adapter tensors must be the same
    set with the same shapes (another network type, rank or module set is refused, naming an example)."""
    from training.networks.build import adapter_state

    expected = adapter_state(model)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise RuntimeError(f"state {where} does not match this network: {len(missing)} adapter tensors missing, "
                           f"{len(unexpected)} unexpected (e.g. {example})")
    for name, tensor in saved.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise RuntimeError(f"state {where} does not match this network: {name} is {tuple(tensor.shape)}, the "
                               f"network has {tuple(expected[name].shape)}")
    model.load_state_dict(saved, strict=False)


def save_state(tr: Trainer, state: TrainState, name: str) -> Path:
    """accelerate's state (LoRA, optimizer, scheduler, RNGs) plus our counters, written to a temporary folder and
    renamed, so an interrupted save never replaces a good state with a broken one. A save that cannot fit is
    refused before it starts; one that fills the disk anyway removes its partial folder and says so in one line."""
    layout, acc = RunLayout(tr.run_dir), tr.parts.accelerator
    final, tmp = layout.state_dir(name), layout.state_tmp(name)
    needed, what = state_bytes(tr), f"the state {final.name}"
    ensure_space(tr.run_dir, what, needed)  # on every rank, so all of them stop together
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash during an earlier save
    acc.wait_for_everyone()
    try:
        write_state(tr, state, tmp)
    except Exception as err:
        full = ran_out_of_space(err, tr.run_dir, needed)  # judged before the partial folder frees its space
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise no_space(tr.run_dir, what, needed) from None
        raise
    if acc.is_main_process:
        old = layout.state_old(name)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def write_state(tr: Trainer, state: TrainState, folder: Path) -> None:
    acc = tr.parts.accelerator
    acc.save_state(str(folder))
    acc.wait_for_everyone()  # every rank has written its RNG state before the folder moves
    state.batches_per_epoch = tr.facts.schedule.batches_per_epoch
    if acc.is_main_process:
        torch.save(tr.parts.generator.get_state(), folder / NOISE_STATE_FILE)
        write_atomic(folder / STATE_FILE, json.dumps(asdict(state), indent=1))


def state_bytes(tr: Trainer) -> int:
    """About how many bytes a state save writes: the LoRA weights and the optimizer's tensors as they are in memory,
    or the largest state this run saved before, whichever is more."""
    optimizer_state = getattr(tr.parts.optimizer, "state", {})
    tensors = [*tr.parts.params, *(t for s in optimizer_state.values() for t in s.values() if torch.is_tensor(t))]
    in_memory = sum(t.numel() * t.element_size() for t in tensors)
    return max(in_memory, *(folder_size(d) for d in RunLayout(tr.run_dir).state_dirs()), 0)


def load_state(tr: Trainer, state_dir: Path) -> TrainState:
    """Restore a saved state; a state that cannot fit this run is a UserError naming what changed."""
    state = TrainState(**json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8")))
    batches_per_epoch = tr.facts.schedule.batches_per_epoch
    if state.batches_per_epoch and state.batches_per_epoch != batches_per_epoch:
        raise UserError(f"resume: {state_dir.name} was saved with {state.batches_per_epoch} batches per epoch, "
                        f"this run has {batches_per_epoch}: the dataset, repeats or batch size changed. "
                        f"Restore them, or start a new run with network_weights = its LoRA file")
    try:
        tr.parts.accelerator.load_state(str(state_dir))
    except (RuntimeError, FileNotFoundError) as err:
        raise UserError(f"resume: {state_dir.name} does not match this run's network or optimizer "
                        f"({str(err).splitlines()[0][:200]}); resume with the settings it was saved with") from None
    tr.parts.generator.set_state(torch.load(state_dir / NOISE_STATE_FILE, weights_only=True))
    return state


# --- save_last_n_*: which older intermediate saves a periodic save leaves behind (never the final LoRA or state)

@dataclass(frozen=True)
class KeepRule:
    """Saves of one kind (per epoch or per step) numbered at most ``newest - keep`` and made by the periodic
    schedule (a multiple of ``every``) are removed: kohya's save_last_n_epochs counts saves (keep = every x N),
    save_last_n_steps counts steps (keep = N + 1: the saves of the last N steps stay)."""

    pattern: str       # the number's part of the name, e.g. r"-(\d{6})" for epochs
    every: int
    keep_lora: int | None
    keep_state: int | None

    def old(self, run_dir: Path, output_name: str, newest: int) -> list[Path]:
        name = re.compile(rf"{re.escape(output_name)}{self.pattern}({re.escape(LORA_SUFFIX)}|{STATE_SUFFIX})")
        out = []
        for path in sorted(Path(run_dir).iterdir()):
            match = name.fullmatch(path.name)
            if match is None:
                continue
            number, is_state = int(match.group(1)), match.group(2) == STATE_SUFFIX
            keep = self.keep_state if is_state else self.keep_lora
            if keep is not None and number % self.every == 0 and number <= newest - keep:
                out.append(path)
        return out


def keep_rules(cfg: TrainConfig) -> dict[str, KeepRule]:
    """The rules a config sets, by the kind of save they apply to ("epoch", "step")."""
    rules = {}
    every, last, last_state = cfg.save_every_n_epochs, cfg.save_last_n_epochs, cfg.save_last_n_epochs_state
    if every and (last or last_state):
        states = last_state or last
        rules["epoch"] = KeepRule(r"-(\d{6})", every, every * last if last else None, every * states)
    every, last, last_state = cfg.save_every_n_steps, cfg.save_last_n_steps, cfg.save_last_n_steps_state
    if every and (last or last_state):
        states = last_state or last
        rules["step"] = KeepRule(r"-step(\d{8})", every, last + 1 if last else None, states + 1)
    return rules


def old_saves(run_dir: Path, cfg: TrainConfig, saved: str, step: int, epochs_done: int) -> list[Path]:
    """The intermediate LoRA files and state folders to remove after the save named ``saved``: the older ones of
    its kind beyond what save_last_n_epochs(_state) / save_last_n_steps(_state) keep. Only a save of the periodic
    kind prunes, as in kohya; the final save (named ``output_name``) never does."""
    rules = keep_rules(cfg)
    if "epoch" in rules and saved == lora_name(cfg.output_name, epoch=epochs_done):
        return rules["epoch"].old(run_dir, cfg.output_name, epochs_done)
    if "step" in rules and saved == lora_name(cfg.output_name, step=step):
        return rules["step"].old(run_dir, cfg.output_name, step)
    return []


def remove_saves(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
