"""Run folders as the UI sees them: where they are, what their events say, and whether their process still lives.

Everything here is derived from files (``events.jsonl``, ``trainer.log``, the supervisor's ``queued``/``cancelled``
markers and ``trainer.pid``) plus a portable "is this pid alive" check, so a restarted UI reaches the same verdict
as the one that started the run. No gradio, no torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.contract.atomic import write_atomic
from training.contract.errors import UserError
from training.contract.events import (
    Checkpoint,
    Done,
    Error,
    Event,
    RunWarning,
    Sample,
    Start,
    Status,
    Step,
    Stopped,
    Val,
    read_events,
)
from training.contract.layout import (
    CANCELLED,
    CLOSED,
    LOG_FILE,
    PID_FILE,
    PRESET_FILE,
    QUEUED,
    TERMINATED,
    RunLayout,
)

RUNS_DIR = "runs"
UNEXPECTED_END = "the trainer process ended unexpectedly"
TERMINAL_STATUS = {"done": "done", "stopped": "stopped", "error": "failed"}
ACTIVE_STATUSES = ("starting", "running")
KILL_AFTER_S = 5.0  # after SIGTERM to a run's process group, how long before SIGKILL
# The trainer writes eta 0 until it has timed two read-backs, and the first steps (warm-up) run slow: an ETA is shown
# only once it was measured over this many steps of the current start.
ETA_MIN_STEPS = 5


@dataclass(frozen=True)
class SavePoint:
    """Where in a run a LoRA was saved, as its checkpoint event says. Every screen that names a save's step or epoch
    takes them from here, never from the file name.

    ``epochs_done`` is the checkpoint event's ``epoch``: epochs completed at save time, the file's ``ss_epoch`` and
    the number in kohya's per-epoch names (``-000003``). A step event's ``epoch`` is the 1-based epoch in progress,
    so in the middle of an epoch it is one more than the ``epochs_done`` of a save made there."""

    step: int | None = None
    epochs_done: int | None = None

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> SavePoint:
        return cls(checkpoint.step, checkpoint.epoch)

    def text(self) -> str:
        """"step 15, 1 epoch done"; only what the event recorded."""
        parts = [] if self.step is None else [f"step {self.step}"]
        if self.epochs_done is not None:
            parts.append(f"{self.epochs_done} epoch{'' if self.epochs_done == 1 else 's'} done")
        return ", ".join(parts)


@dataclass
class RunState:
    """What a run's events add up to. ``apply`` folds one event in; unknown events and fields are ignored."""

    started: bool = False
    pid: int | None = None
    start_t: float | None = None
    phase: str = ""
    msg: str = ""
    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    total_epochs: int | None = None
    eta: float | None = None  # seconds left, None until measured (ETA_MIN_STEPS)
    steps_timed: int = 0  # step events since the last start event
    images_per_s: float | None = None
    loss: Any = None  # float, or "nan"/"inf" as written by EventWriter
    smoothed: Any = None
    val_loss: Any = None
    last_checkpoint: str | None = None
    last_save: SavePoint | None = None  # step and epoch of the newest checkpoint event
    sample_paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    terminal: str | None = None  # "done" | "stopped" | "error"
    final_path: str | None = None
    state_path: str | None = None
    error: str | None = None

    def copy(self) -> RunState:
        """A snapshot that later events do not change."""
        return replace(self, sample_paths=list(self.sample_paths), warnings=list(self.warnings))

    def measured_eta(self, event: Step) -> float | None:
        """The step's ETA once it is a measurement: timed over enough steps and not the 0 written before any."""
        measured = self.steps_timed >= ETA_MIN_STEPS and bool(event.images_per_s)
        return event.eta if measured and event.eta else None

    def apply(self, event: Event) -> None:
        match event:
            case Start():  # a resume writes a new start into the same folder: the earlier ending no longer counts
                self.started, self.pid, self.start_t = True, event.pid, event.t
                self.total_steps, self.total_epochs = event.total_steps, event.total_epochs
                self.step, self.steps_timed, self.eta = event.start_step or 0, 0, None
                self.terminal = self.error = self.final_path = None
            case Status():
                self.phase, self.msg = event.phase, event.msg
            case Step():
                self.step, self.epoch = event.step, event.epoch if event.epoch is not None else self.epoch
                self.loss, self.smoothed = event.loss, event.smoothed
                self.steps_timed += 1
                self.eta, self.images_per_s = self.measured_eta(event), event.images_per_s
            case Val():
                self.val_loss = event.loss
            case Sample():
                self.sample_paths.extend(event.paths)
            case Checkpoint():
                self.last_checkpoint, self.last_save = event.path, SavePoint.of(event)
            case RunWarning():
                self.warnings.append(str(event.msg))
            case Done():
                self.terminal, self.final_path = "done", event.path
                self.step = event.step if event.step is not None else self.step
            case Stopped():
                self.terminal, self.state_path = "stopped", event.state
                self.step = event.step if event.step is not None else self.step
                self.last_checkpoint = event.last_checkpoint or self.last_checkpoint
            case Error():
                self.terminal, self.error = "error", event.msg
                self.last_checkpoint = event.last_checkpoint or self.last_checkpoint


@dataclass
class RunSummary:
    """One line of the runs list: enough to show, re-attach to, or open a finished run."""

    run_dir: Path
    output_name: str
    run_id: str
    status: str
    step: int
    total_steps: int | None
    smoothed: Any
    last_checkpoint: str | None
    final_path: str | None
    error: str | None

    @property
    def running(self) -> bool:
        return self.status in ACTIVE_STATUSES


def summarize(run_dir: Path, state: RunState, status: str, error: str | None) -> RunSummary:
    return RunSummary(run_dir, run_dir.parent.name, run_dir.name, status, state.step, state.total_steps,
                      state.smoothed, state.last_checkpoint, state.final_path, error)


def replay(run_dir: Path) -> RunState:
    """A run's state from all its events so far."""
    state = RunState()
    for event in read_events(run_dir):
        state.apply(event)
    return state


def start_state(run_dir: Path) -> RunState:
    """Only the last start event applied: enough for its pid."""
    state = RunState()
    starts = [e for e in read_events(run_dir) if isinstance(e, Start)]
    if starts:
        state.apply(starts[-1])
    return state


def run_dirs(data_dir: Path) -> list[Path]:
    """Run folders under data_dir/runs/<output_name>/<YYYYmmdd-HHMMSS>/, newest first (the names sort by time)."""
    root = data_dir / RUNS_DIR
    found = [p for p in root.glob("*/*") if p.is_dir() and RunLayout(p).is_run()]
    return sorted(found, key=lambda p: (p.name, p.parent.name), reverse=True)


def run_folder(data_dir: Path, value: str) -> Path:
    """The run folder a picker value names: ``<output_name>/<stamp>`` under data_dir/runs, or that folder's absolute
    path. The value can come from an API call, not only from a list, so anything else is refused (UserError)."""
    root = (data_dir / RUNS_DIR).resolve()
    path = (root / Path(value).expanduser()).resolve()  # an absolute value replaces root
    inside = path.is_relative_to(root) and len(path.relative_to(root).parts) == 2
    if not inside or not RunLayout(path).is_run():
        raise UserError(f"{value} is not a run folder under {root}")
    return path


def queued_runs(data_dir: Path) -> list[Path]:
    """Queued run folders in the order they were queued (the time in the marker; folder name breaks ties)."""

    def queued_at(marker: Path) -> float:
        try:
            return float(marker.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return marker.stat().st_mtime if marker.exists() else 0.0

    markers = list((data_dir / RUNS_DIR).glob(f"*/*/{QUEUED}"))
    return [m.parent for m in sorted(markers, key=lambda m: (queued_at(m), str(m)))]


def settled_status(run_dir: Path, state: RunState) -> str | None:
    """The status files alone decide (cancelled, queued, or a terminal event); None while it depends on liveness."""
    if (run_dir / CANCELLED).exists():
        return "cancelled"
    if (run_dir / QUEUED).exists():
        return "queued"
    return TERMINAL_STATUS.get(state.terminal or "")


def pid_reference(run_dir: Path, state: RunState) -> tuple[int, float | None] | None:
    """The pid to watch and a time its process must have existed by (to notice a pid reused after a reboot):
    the start event's pid, else the pid the supervisor recorded at spawn."""
    if state.pid:
        return int(state.pid), state.start_t
    path = run_dir / PID_FILE
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text(encoding="utf-8").strip()), path.stat().st_mtime
    return None


def earlier_curve(state_dir: str | None, up_to: int | None, depth: int = 0) -> tuple[list[Step], list[Val]]:
    """(step events, val events) that led to a saved state: those of the run that saved it, up to its step, and
    of the runs that one resumed from in turn. Empty when the state is not from a run folder we can read."""
    if not state_dir or not up_to or depth > 20:
        return [], []
    events = read_events(Path(state_dir).parent)
    start = next((e for e in events if isinstance(e, Start)), Start())
    steps, vals = earlier_curve(start.resumed_from, start.start_step, depth + 1)
    steps += [e for e in events if isinstance(e, Step) and e.step <= up_to]
    vals += [e for e in events if isinstance(e, Val) and e.step <= up_to]
    return steps, vals


def read_preset(run_dir: Path) -> dict[str, Any] | None:
    """The preset record the UI wrote at start, or None (a CLI run, or started without a preset)."""
    try:
        data = json.loads((run_dir / PRESET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(run_dir: Path, lines: int = 15, max_bytes: int = 16384) -> str:
    """The last lines of trainer.log: why a process died when it could not write an error event itself."""
    path = run_dir / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def failure_message(run_dir: Path, exit_code: int | None = None) -> str:
    """Why a process ended without a terminal event: the supervisor's own reason when it ended it, else the log."""
    with contextlib.suppress(OSError):
        return (run_dir / TERMINATED).read_text(encoding="utf-8")
    tail = log_tail(run_dir)
    if exit_code == 2:  # the trainer refused its input before writing events: its one-line reason is the message
        reason = next((ln for ln in reversed(tail.splitlines()) if ln.startswith("error: ")), "")
        if reason:
            return reason.removeprefix("error: ")
    return f"{UNEXPECTED_END}{exit_text(exit_code)}" + (f"; last lines of {LOG_FILE}:\n{tail}" if tail else "")


def exit_text(exit_code: int | None) -> str:
    """How a process ended, for a failure line: a negative status is the signal that ended it (POSIX)."""
    if exit_code is None:
        return ""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f": ended by signal {name} (exit status {exit_code})"
    return f" (exit status {exit_code})"


def describe(status: str, state: RunState, error: str | None, position: int | None) -> str:
    """One status line for the UI."""
    if status == "queued":
        return f"queued (position {position})" if position else "queued"
    if status == "starting":
        return f"starting: {state.msg}" if state.msg else "starting"
    if status == "running":
        parts = [f"step {state.step}/{state.total_steps}", f"epoch {state.epoch}/{state.total_epochs}"]
        if isinstance(state.smoothed, float):
            parts.append(f"loss {state.smoothed:.4f}")
        if state.eta is not None:
            parts.append(eta_text(state.eta))
        return " · ".join(parts) if state.phase == "training" else f"{state.msg} ({parts[0]})"
    if status == "done":
        return f"done: {state.final_path}"
    if status == "stopped":
        return f"stopped at step {state.step}: {state.last_checkpoint}"
    if status == "failed":
        return f"failed: {error}"
    return status


def eta_text(seconds: float) -> str:
    """Rounded up: a run with 0.4 s left is not done, so it never reads "0m 00s"."""
    whole = math.ceil(seconds)
    return f"ETA {whole // 60}m {whole % 60:02d}s"


def terminate_group(pid: int, alive: Callable[[], bool], kill_after_s: float = KILL_AFTER_S) -> None:
    """SIGTERM the process group led by pid (the trainer takes it as a stop), then SIGKILL it if it lingers.
    Windows: CTRL_BREAK_EVENT to the group, then ``taskkill /T /F`` for the process tree."""
    if os.name == "nt":
        with contextlib.suppress(OSError):
            os.kill(pid, signal.CTRL_BREAK_EVENT)
        _wait(alive, kill_after_s)
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False)
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid == os.getpgrp():  # never signal our own group (a run that was not started in its own session)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    _wait(alive, kill_after_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait(alive: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)


# --- the queue and closing the UI (JobSupervisor's queue view and shutdown)

HELD_TEXT = "queued (waiting for you since the restart)"


def mark_closed(run_dir: Path, how: str) -> None:
    """Note that the UI stopped this run because the UI itself was closed (``how``: "Ctrl+C", "SIGTERM")."""
    write_atomic(run_dir / CLOSED, how)


def closed_text(run_dir: Path, state: RunState) -> str | None:
    """The status line of a run the closing UI stopped, or None when it was not stopped that way."""
    try:
        how = (run_dir / CLOSED).read_text(encoding="utf-8").strip() or "closed"
    except OSError:
        return None
    if state.terminal != "stopped":
        return None
    saved = f"the LoRA and state were saved at step {state.step}" if state.state_path else "nothing was saved"
    return f"stopped: LoraForge was closed ({how}); {saved}"
