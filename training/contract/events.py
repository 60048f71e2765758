"""The run folder's event stream and control flags: the only runtime contract between a run and its watchers.

The trainer appends one JSON object per line to ``events.jsonl``; the UI (or anyone) tails it with EventReader.
Control goes the other way through empty flag files in ``control/`` (stop, sample, save), which also work on Windows
where a UI cannot send Ctrl+C to a child. Torch-free: the UI imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from training.contract.jsonl_tail import JsonlTail
from training.contract.layout import EVENTS_FILE

EVENT_VERSION = 1
TERMINAL_EVENTS = ("done", "stopped", "error")


# --- the records: one dataclass per event kind, shared by the writer (trainer, dry run) and the readers (UI, CLI).
# Field defaults let a reader open run folders written before a field existed; the writer rejects unknown fields.
@dataclass(frozen=True, kw_only=True)
class Event(Mapping[str, Any]):
    """Common to every event: schema version ``v``, wall time ``t``. Also a read-only mapping of the fields as
    written, so generic readers (series by field name for the chart) need no per-kind code."""

    EVENT: ClassVar[str] = ""
    v: int = EVENT_VERSION
    t: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # fields from a newer writer

    @property
    def event(self) -> str:
        return self.EVENT

    def fields(self) -> dict[str, Any]:
        """The JSON object of this event as written to the stream."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {"v": own.pop("v"), "t": own.pop("t"), "event": self.event, **own, **self.extra}

    def __getitem__(self, key: str) -> Any:
        return self.fields()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields())

    def __len__(self) -> int:
        return len(self.fields())


@dataclass(frozen=True, kw_only=True)
class Start(Event):
    """A run (or a resume of it) began: its plan, where it resumed from, its resolved config and dataset."""

    EVENT: ClassVar[str] = "start"
    run_id: str | None = None
    pid: int | None = None
    family: str | None = None
    total_steps: int | None = None
    total_epochs: int | None = None
    steps_per_epoch: int | None = None
    resumed_from: str | None = None
    start_step: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False


@dataclass(frozen=True, kw_only=True)
class Status(Event):
    """The phase changed (loading, caching_latents, compiling, training, sampling, saving), with a line for
    people. ``compiling``: the first step of a new input shape under torch_compile; its last line gives the time."""

    EVENT: ClassVar[str] = "status"
    phase: str = ""
    msg: str = ""


@dataclass(frozen=True, kw_only=True)
class Step(Event):
    """One optimizer step. ``epoch`` is 1-based: the epoch this step belongs to. ``loss`` may be "nan"/"inf"."""

    EVENT: ClassVar[str] = "step"
    step: int = 0
    epoch: int | None = None
    loss: float | str | None = None
    smoothed: float | str | None = None
    lr: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    elapsed: float | None = None
    eta: float | None = None
    peak_mem_gb: float | None = None
    # scale_weight_norms (kohya's names): LoRA modules scaled down at this step, mean and largest module norm after
    keys_scaled: int | None = None
    average_key_norm: float | None = None
    max_key_norm: float | None = None


@dataclass(frozen=True, kw_only=True)
class Val(Event):
    """The stable validation loss at a step; ``kind`` of images: "held-out" or "train-subset"."""

    EVENT: ClassVar[str] = "val"
    step: int = 0
    loss: float | str | None = None
    kind: str | None = None


@dataclass(frozen=True, kw_only=True)
class Sample(Event):
    """Sample images made at a step; ``epoch`` is set for per-epoch samples (epochs completed), else None."""

    EVENT: ClassVar[str] = "sample"
    step: int = 0
    epoch: int | None = None
    paths: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Checkpoint(Event):
    """A LoRA file was saved at ``step``; ``epoch`` counts the epochs completed by then (the file's ``ss_epoch``, the
    number in a per-epoch name), unlike a step event's 1-based epoch in progress. ``check_result`` is the file's
    self-check (``training.contract.lora_check.SelfCheck.to_event``); ``check`` words it for people and for readers
    of run folders written before the record existed."""

    EVENT: ClassVar[str] = "checkpoint"
    step: int = 0
    epoch: int | None = None
    path: str | None = None
    check: str | None = None
    check_result: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class StateSaved(Event):
    """A resumable training state folder was written."""

    EVENT: ClassVar[str] = "state_saved"
    step: int = 0
    path: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunWarning(Event):
    """Something the user should know that does not stop the run (a skipped image, a fallback taken)."""

    EVENT: ClassVar[str] = "warning"
    code: str | None = None
    msg: str = ""


@dataclass(frozen=True, kw_only=True)
class Done(Event):
    """The run finished; ``path`` is the final LoRA."""

    EVENT: ClassVar[str] = "done"
    path: str | None = None
    step: int | None = None


@dataclass(frozen=True, kw_only=True)
class Stopped(Event):
    """The run stopped on request after saving its LoRA and the state to resume from."""

    EVENT: ClassVar[str] = "stopped"
    step: int | None = None
    last_checkpoint: str | None = None
    state: str | None = None


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    """The run failed. ``code`` names known failures ("non_finite_loss" with ``step`` and ``last_checkpoint``);
    ``traceback`` is None for bad input the user can fix."""

    EVENT: ClassVar[str] = "error"
    msg: str = ""
    traceback: str | None = None
    code: str | None = None
    step: int | None = None
    last_checkpoint: str | None = None


@dataclass(frozen=True, kw_only=True)
class Unknown(Event):
    """An event kind this reader does not know (from a newer writer): kept, ignored by the screens."""

    name: str = ""

    @property
    def event(self) -> str:
        return self.name

    def fields(self) -> dict[str, Any]:
        return {"v": self.v, "t": self.t, "event": self.name, **self.extra}


EVENT_TYPES: dict[str, type[Event]] = {cls.EVENT: cls for cls in (Start, Status, Step, Val, Sample, Checkpoint,
                                                                    StateSaved, RunWarning, Done, Stopped, Error)}


def make_event(event: str, /, **fields: Any) -> Event:
    """The record for an event about to be written; an unknown kind or field is a bug in the writer (TypeError)."""
    return EVENT_TYPES[event](**fields)


def parse_event(record: dict[str, Any]) -> Event:
    """The record for a line read from the stream. Fields this reader does not know are kept in ``extra``."""
    name = str(record.get("event"))
    cls = EVENT_TYPES.get(name)
    body = {k: v for k, v in record.items() if k != "event"}
    if cls is None:
        return Unknown(v=body.pop("v", EVENT_VERSION), t=body.pop("t", None), name=name, extra=body)
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return cls(**{k: v for k, v in body.items() if k in known},
               extra={k: v for k, v in body.items() if k not in known})


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so a NaN loss is still reported, not a broken line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def console_line(event: Event) -> str | None:
    """What a person at a terminal should read for an event (steps are the progress bar's job)."""
    match event:
        case Status(phase="training"):
            return None
        case Status():
            return event.msg
        case RunWarning():
            return f"warning: {event.msg}"
        case Val():
            return f"step {event.step}: validation loss {_clean(event.loss)} ({event.kind})"
        case Checkpoint():
            return f"saved {event.path} ({event.check})"
        case Sample():
            return f"samples: {', '.join(event.paths)}"
        case Error():
            return f"error: {event.msg}"
    return None


class EventWriter:
    """Appends event lines; each line is flushed at once so a watcher sees it and a crash loses nothing.

    ``echo`` (e.g. print) also shows the human-readable ones on the console."""

    def __init__(self, run_dir: Path, enabled: bool = True, echo: Callable[[str], None] | None = None) -> None:
        self.path = run_dir / EVENTS_FILE
        self.enabled = enabled  # False on non-main processes of a multi-GPU run
        self.echo = echo
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def emit(self, event: str | Event, /, **fields: Any) -> None:
        """Write an event: a record, or its kind and fields (checked against the record, so a typo fails here)."""
        record_obj = make_event(event, **fields) if isinstance(event, str) else event
        if not self.enabled:
            return
        record = _clean(record_obj.fields() | {"t": round(time.time(), 3)})
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        line = console_line(record_obj) if self.echo else None
        if line:
            self.echo(line)

    def close(self) -> None:
        if self.enabled and not self._file.closed:
            self._file.close()


class EventReader:
    """Tails events.jsonl (see ``JsonlTail``: a partial last line waits for the next poll). Malformed complete
    lines are counted and skipped; unknown events are returned as they are."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.malformed = 0
        self._tail = JsonlTail(self.path)

    def poll(self) -> list[Event]:
        events = []
        for record in self._tail.new_records():
            if record is not None and "event" in record:
                events.append(parse_event(record))
            else:
                self.malformed += 1
        return events


def read_events(run_dir: Path) -> list[Event]:
    """All complete events of a run."""
    return EventReader(run_dir / EVENTS_FILE).poll()
