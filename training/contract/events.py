"""The run folder's event stream and control flags: the only runtime contract between a run and its watchers.

The trainer appends one JSON object per line to ``events.jsonl``; the UI (or anyone) tails it with EventReader.
Control goes the other way through empty flag files in ``control/`` (stop, sample, save), which also work on Windows
where a UI cannot send Ctrl+C to a child. Torch-free: the UI imports this module.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.contract.errors import UserError
from training.contract.layout import CONTROL_DIR, EVENTS_FILE

EVENT_VERSION = 1
CONTROL_FLAGS = ("stop", "sample", "save")
TERMINAL_EVENTS = ("done", "stopped", "error")


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so a NaN loss is still reported, not a broken line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def console_line(record: dict[str, Any]) -> str | None:
    """What a person at a terminal should read for an event (steps are the progress bar's job)."""
    event = record["event"]
    if event == "status":
        return None if record.get("phase") == "training" else record.get("msg")
    if event == "warning":
        return f"warning: {record.get('msg')}"
    if event == "val":
        return f"step {record['step']}: validation loss {record['loss']} ({record.get('kind')})"
    if event == "checkpoint":
        return f"saved {record['path']} ({record.get('check')})"
    if event == "sample":
        return f"samples: {', '.join(record.get('paths', []))}"
    if event == "error":
        return f"error: {record.get('msg')}"
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

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"v": EVENT_VERSION, "t": round(time.time(), 3), "event": event, **_clean(fields)}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        line = console_line(record) if self.echo else None
        if line:
            self.echo(line)

    def close(self) -> None:
        if self.enabled and not self._file.closed:
            self._file.close()


@dataclass
class EventReader:
    """Tails events.jsonl from a byte offset. A partial last line is normal (the writer is mid-line): it is kept
    for the next poll. Malformed complete lines are counted and skipped; unknown events are returned as they are."""

    path: Path
    offset: int = 0
    malformed: int = 0
    _tail: bytes = field(default=b"", repr=False)

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._tail + chunk
        *lines, self._tail = data.split(b"\n")
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.malformed += 1
                continue
            if isinstance(record, dict) and "event" in record:
                events.append(record)
            else:
                self.malformed += 1
        return events


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """All complete events of a run."""
    return EventReader(run_dir / EVENTS_FILE).poll()


class Control:
    """Flag files in <run>/control/. The trainer checks them between steps (a few stat calls)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / CONTROL_DIR

    def request(self, flag: str) -> None:
        if flag not in CONTROL_FLAGS:
            raise ValueError(f"unknown control flag {flag!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / flag).touch()

    def is_set(self, flag: str) -> bool:
        return (self.dir / flag).exists()

    def take(self, flag: str) -> bool:
        """True once per request: the flag is removed when seen (stop stays until the run ends)."""
        path = self.dir / flag
        if not path.exists():
            return False
        if flag != "stop":
            path.unlink(missing_ok=True)
        return True

    def clear(self) -> None:
        for flag in CONTROL_FLAGS:
            (self.dir / flag).unlink(missing_ok=True)



def install_signal_handlers(control: Control) -> dict[int, Any]:
    """Ctrl+C / SIGTERM ask for a stop through the same flag as the UI's Stop button: the run finishes the step,
    saves the LoRA and state and ends as "stopped". A second Ctrl+C aborts at once."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if control.is_set("stop"):
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        control.request("stop")
        print("\nstopping after this step (saving LoRA and state); press Ctrl+C again to abort", flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread (e.g. called from a test thread)
            previous[sig] = signal.signal(sig, handler)
    return previous


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


@contextlib.contextmanager
def reporting(events: EventWriter, control: Control) -> Iterator[None]:
    """The frame of a run: signals ask for a stop, an exception becomes the run's one error event (a UserError
    without traceback; anything already reported, e.g. a NaN stop, is left alone), the stream is closed."""
    previous = install_signal_handlers(control)
    try:
        yield
    except Exception as err:
        if not getattr(err, "reported", False):
            if isinstance(err, UserError):
                events.emit("error", msg=str(err), traceback=None)
                err.reported = events.echo is not None and events.enabled  # shown on the console already
            else:
                events.emit("error", msg=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        restore_signal_handlers(previous)
        events.close()
