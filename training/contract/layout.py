"""The run folder: every file and folder of a run, named in this one place.

A run folder (``output_dir``) is the whole runtime contract between whoever starts a run (the UI's supervisor, a
terminal) and the trainer: the starter writes ``job.toml`` and touches ``control/`` flags, the trainer appends to
``events.jsonl`` and writes LoRA files, state folders and samples. Torch-free: both sides import it.

Save names follow kohya: ``<name>-000003`` after epoch 3, ``<name>-step00000500`` at step 500, ``<name>`` at the end;
the state for resuming sits beside its LoRA as ``<name>-000003-state``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

# Written by the starter
JOB_FILE = "job.toml"              # the fully resolved config the trainer runs with
CONTROL_DIR = "control"            # flag files: stop, sample, save
# Written by the trainer
EVENTS_FILE = "events.jsonl"       # one JSON event per line (training.contract.events)
SAMPLE_DIR = "sample"              # sample images
LOGS_DIR = "logs"                  # TensorBoard logs, when tensorboard is installed
LORA_SUFFIX = ".safetensors"
STATE_SUFFIX = "-state"            # a resumable training state folder beside its LoRA
STATE_FILE = "train_state.json"    # counters and curves inside a state folder
NOISE_STATE_FILE = "noise_generator.pt"
LATENT_CACHE_DIR = ".latent_cache"  # beside the run folders (shared by runs on the same images)
LOCK_FILE = "trainer.lock"         # the run using the folder (pid, start time, host); removed when it ends
TEMP_SUFFIX = ".tmp"               # files and state folders being written (training.contract.atomic, save_state)
OLD_STATE_SUFFIX = ".old"          # a state being replaced by a newer save of the same name
# Written by the UI's supervisor (a terminal run has none of these)
LOG_FILE = "trainer.log"           # the child's stdout and stderr
PID_FILE = "trainer.pid"           # liveness before the trainer's start event
QUEUED = "queued"                  # job.toml waits for the active run to end; holds the time it was queued
CANCELLED = "cancelled"            # a queued job removed before it started
TERMINATED = "terminated"          # the supervisor ended the process group after a stop's grace; holds the reason
CLOSED = "closed"                  # the UI stopped the run because it was closed (Ctrl+C, SIGTERM); holds how
PRESET_FILE = "preset.json"        # the preset the run started from (name, family, loss band)


def lora_name(output_name: str, epoch: int | None = None, step: int | None = None) -> str:
    """A save's name (without suffix): per epoch, per step, or the final one."""
    if epoch is not None:
        return f"{output_name}-{epoch:06d}"
    if step is not None:
        return f"{output_name}-step{step:08d}"
    return output_name


def sample_file_name(output_name: str, step: int, epoch: int | None, index: int, seed: int) -> str:
    """kohya's pattern: <name>_e000003_00_<time>_<seed>.png for epoch samples, <name>_000120_... for steps."""
    suffix = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name}_{suffix}_{index:02d}_{time.strftime('%Y%m%d%H%M%S')}_{seed}.png"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    @property
    def job(self) -> Path:
        return self.root / JOB_FILE

    @property
    def events(self) -> Path:
        return self.root / EVENTS_FILE

    @property
    def samples(self) -> Path:
        return self.root / SAMPLE_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def lora(self, name: str) -> Path:
        return self.root / f"{name}{LORA_SUFFIX}"

    def state_dir(self, name: str) -> Path:
        return self.root / f"{name}{STATE_SUFFIX}"

    def state_tmp(self, name: str) -> Path:
        """Where a state is written before it replaces ``state_dir(name)`` (a crash never leaves half a state)."""
        return self.root / f".{name}{STATE_SUFFIX}{TEMP_SUFFIX}"

    def state_old(self, name: str) -> Path:
        """Where the earlier state of that name waits while a new one takes its place."""
        return self.root / f"{name}{STATE_SUFFIX}{OLD_STATE_SUFFIX}"

    def temp_leftovers(self) -> list[Path]:
        """Temporary files and state folders: a run killed mid-write leaves them (names start with a dot)."""
        folders = [self.root, self.samples]
        return sorted(p for folder in folders for p in folder.glob(f".*{TEMP_SUFFIX}"))

    def saves_of(self, output_name: str) -> list[Path]:
        """The LoRA files and state folders a run named ``output_name`` writes (final, per epoch, per step)."""
        pattern = re.compile(rf"{re.escape(output_name)}(-\d{{6}}|-step\d{{8}})?"
                             rf"({re.escape(LORA_SUFFIX)}|{STATE_SUFFIX}|{STATE_SUFFIX}{re.escape(OLD_STATE_SUFFIX)})")
        return sorted(p for p in self.root.iterdir() if pattern.fullmatch(p.name)) if self.root.is_dir() else []

    def loras(self) -> list[Path]:
        return sorted(self.root.glob(f"*{LORA_SUFFIX}"))

    def state_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"*{STATE_SUFFIX}") if p.is_dir())

    def is_run(self) -> bool:
        """A folder a run was started in (or queued into)."""
        return self.job.is_file() or self.events.is_file()


def is_state_dir(path: Path) -> bool:
    """A resumable state: a folder holding the state file."""
    return (path / STATE_FILE).is_file()
