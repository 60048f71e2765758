"""``python -m training.tools ... --events FILE``: what a LoRA tool is doing, one JSON object a line, written by the
tool and read back typed by a UI. Torch-free: the UI imports it.

Every line has ``event`` and ``t`` (Unix time). The kinds:

- ``start``: ``command`` (merge, merge-loras, resize, extract, inspect).
- ``progress``: ``done`` and ``total`` (items of the operation's per-module or per-tensor loop), ``what`` (what
  is counted: "modules", "tensors", "blocks").
- ``line``: ``text``, one line of the report the tool prints (the same lines as on stdout).
- ``done``: ``output``, the file or folder written ("" for inspect, which writes nothing).
- ``error``: ``message``, the one-line reason the tool stopped (bad input, a full disk, an interruption).

The last line of a job that ended on its own is ``done`` or ``error``. Each line is flushed as written, so a
reader may poll the file while the tool runs; a half-written last line waits for the next poll.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.jsonl_tail import EventTail

START, PROGRESS, LINE, DONE, ERROR = "start", "progress", "line", "done", "error"


@dataclass(frozen=True)
class ToolStart:
    command: str


@dataclass(frozen=True)
class ToolProgress:
    done: int
    total: int
    what: str = "modules"


@dataclass(frozen=True)
class ToolLine:
    text: str


@dataclass(frozen=True)
class ToolDone:
    output: str = ""


@dataclass(frozen=True)
class ToolError:
    message: str


ToolEvent = ToolStart | ToolProgress | ToolLine | ToolDone | ToolError


class ToolEventWriter:
    """Appends events to ``path``; with ``path`` None it writes nothing (the tool run from a terminal)."""

    def __init__(self, path: Path | None) -> None:
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 closed in close()

    def start(self, command: str) -> None:
        self._write(START, command=command)

    def progress(self, done: int, total: int, what: str = "modules") -> None:
        self._write(PROGRESS, done=int(done), total=int(total), what=what)

    def line(self, text: str) -> None:
        self._write(LINE, text=str(text))

    def done(self, output: Path | str | None) -> None:
        self._write(DONE, output=str(output) if output else "")

    def error(self, message: str) -> None:
        self._write(ERROR, message=" ".join(str(message).split()))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _write(self, kind: str, **fields: Any) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"event": kind, "t": round(time.time(), 3), **fields}) + "\n")
        self.file.flush()


def tool_event(data: dict[str, Any] | None) -> ToolEvent | None:
    """A parsed line as its record; None for a line that is not a known event (a newer writer's kind, garbage)."""
    if data is None:
        return None
    try:
        return _record(data)
    except (KeyError, TypeError, ValueError):
        return None


def _record(data: dict[str, Any]) -> ToolEvent | None:
    kind = data.get("event")
    if kind == START:
        return ToolStart(str(data["command"]))
    if kind == PROGRESS:
        return ToolProgress(int(data["done"]), int(data["total"]), str(data.get("what", "modules")))
    if kind == LINE:
        return ToolLine(str(data["text"]))
    if kind == DONE:
        return ToolDone(str(data.get("output", "")))
    if kind == ERROR:
        return ToolError(str(data["message"]))
    return None


class ToolEventReader(EventTail[ToolEvent]):
    """Reads an events file from where the last call stopped; only complete lines (ending in a newline)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, tool_event)
