"""How long a run is, what it does when, and which images it holds out.

Torch-free, so the dataset check shows the same plan as the run, and the dry run (``training.run.dry_run``) replays
the same points as the training loop (``training.run.loop``): both build one ``Schedule`` and ask it which actions
fall after a step, after an epoch, at the start and at the end, then carry them out with their own implementations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from training.contract.config import TrainConfig
from training.contract.layout import lora_name
from training.data.folder import ImageItem

VALIDATE, SAMPLE, SAVE = "validate", "sample", "save"
VALIDATION_POINTS = 20  # validation_every_n_steps unset: about this many validation losses per run


@dataclass(frozen=True)
class Action:
    """One thing a run does at a point of its schedule."""

    kind: Literal["validate", "sample", "save"]
    name: str = ""            # save: the LoRA's name without suffix (training.contract.layout.lora_name)
    epoch: int | None = None  # sample: the epoch just finished; None for a sample at a step
    with_state: bool = False  # save: also write the resumable state folder beside the LoRA


@dataclass(frozen=True)
class Schedule:
    """The run's length and its periodic work, derived once so the loop, the dry run, events and metadata agree.

    Steps are counted from 1; step 0 is the start, before any training."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    total_epochs: int
    validation_every: int  # steps between validation losses; 0 = no validation
    output_name: str
    save_every_n_steps: int
    save_every_n_epochs: int
    sample_every_n_steps: int
    sample_every_n_epochs: int
    save_state: bool
    save_state_on_train_end: bool = False

    @classmethod
    def build(cls, cfg: TrainConfig, batches_per_epoch: int, num_processes: int = 1) -> Schedule:
        """``batches_per_epoch`` counts every process's batches together; each process steps through its share."""
        per_process = math.ceil(batches_per_epoch / num_processes)
        steps_per_epoch = max(1, math.ceil(per_process / cfg.gradient_accumulation_steps))
        total = cfg.max_train_epochs * steps_per_epoch if cfg.max_train_epochs else cfg.max_train_steps
        every = cfg.validation_every_n_steps
        validation_every = 0 if every == 0 else every or max(1, total // VALIDATION_POINTS)
        return cls(batches_per_epoch, steps_per_epoch, total, math.ceil(total / steps_per_epoch), validation_every,
                   cfg.output_name, cfg.save_every_n_steps or 0, cfg.save_every_n_epochs or 0,
                   cfg.sample_every_n_steps or 0, cfg.sample_every_n_epochs or 0, cfg.save_state,
                   cfg.save_state_on_train_end)

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch a step trains in (step 0 counts as epoch 1)."""
        return (max(step, 1) - 1) // self.steps_per_epoch + 1

    def epochs_done(self, step: int) -> int:
        """Epochs completed once ``step`` has trained: a save's epoch (the checkpoint event's, the file's ss_epoch).
        A step that ends an epoch completes it, also when its save comes before the loop moves to the next epoch."""
        return step // self.steps_per_epoch

    def is_done(self, step: int) -> bool:
        return step >= self.total_steps

    def at_start(self, step: int) -> list[Action]:
        """Before the first step of a fresh run: the untrained validation loss, the curve's first point."""
        return [Action(VALIDATE)] if step == 0 and self.validation_every else []

    def after_step(self, step: int) -> list[Action]:
        """Validate, sample, then save; the last step saves no per-step file, as the final save follows."""
        actions = []
        if self.validation_every and step % self.validation_every == 0:
            actions.append(Action(VALIDATE))
        if self.sample_every_n_steps and step % self.sample_every_n_steps == 0:
            actions.append(Action(SAMPLE))
        if self.save_every_n_steps and step % self.save_every_n_steps == 0 and not self.is_done(step):
            actions.append(self.periodic_save(lora_name(self.output_name, step=step)))
        return actions

    def after_epoch(self, epoch_done: int, step: int) -> list[Action]:
        """Save, then sample, after epoch ``epoch_done`` (1-based) ended at ``step``; no per-epoch file at the end."""
        actions = []
        if self.save_every_n_epochs and epoch_done % self.save_every_n_epochs == 0 and not self.is_done(step):
            actions.append(self.periodic_save(lora_name(self.output_name, epoch=epoch_done)))
        if self.sample_every_n_epochs and epoch_done % self.sample_every_n_epochs == 0:
            actions.append(Action(SAMPLE, epoch=epoch_done))
        return actions

    def at_end(self, step: int, validated_at: int | None) -> list[Action]:
        """A run that finished: the last validation loss unless one was taken at this very step, then the final
        LoRA. ``validated_at`` is the step of the latest validation, None when there was none."""
        actions = [Action(VALIDATE)] if self.validation_every and validated_at != step else []
        final = Action(SAVE, self.output_name, with_state=self.save_state or self.save_state_on_train_end)
        return [*actions, final]

    def requested_save(self, step: int) -> Action:
        """A save the user asked for (the save flag) or a stop needs: always with its state, so the run resumes."""
        return Action(SAVE, lora_name(self.output_name, step=step), with_state=True)

    def periodic_save(self, name: str) -> Action:
        return Action(SAVE, name, with_state=self.save_state)


class Performer(Protocol):
    """What carries out a schedule's actions: the training loop, or the dry run's synthetic stand-in."""

    def validate(self) -> None: ...

    def sample(self, epoch: int | None) -> None: ...

    def save(self, name: str, with_state: bool) -> Path | None: ...


def perform(performer: Performer, actions: Iterable[Action]) -> Path | None:
    """Carry out actions in order; returns the path of the last LoRA saved (None when none was saved here)."""
    saved = None
    for action in actions:
        if action.kind == VALIDATE:
            performer.validate()
        elif action.kind == SAMPLE:
            performer.sample(epoch=action.epoch)
        else:
            saved = performer.save(action.name, with_state=action.with_state)
    return saved


def split_validation(cfg: TrainConfig, items: list[ImageItem]) -> tuple[list[ImageItem], list[ImageItem], str]:
    """Hold out images for the validation loss, or fall back to a fixed training subset on tiny datasets."""
    if cfg.validation_every_n_steps == 0:
        return items, [], "off"
    held = round(len(items) * cfg.validation_split)
    if held >= 1 and len(items) - held >= 1:
        rng = random.Random(cfg.seed)
        chosen = set(rng.sample(range(len(items)), held))
        train = [it for i, it in enumerate(items) if i not in chosen]
        return train, [items[i] for i in sorted(chosen)], "held-out"
    return items, items[:4], "train-subset"
