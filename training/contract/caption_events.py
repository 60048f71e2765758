"""What ``python -m training.caption --events FILE`` writes, read back as typed records. Torch-free: the UI imports it.

One JSON object a line, appended and flushed as the run goes (the writer is training/caption/events.py, whose
docstring lists the fields). CaptionEventReader hands out each complete new line once, so a UI can poll the file
while the captioner writes it; a half-written last line waits for the next poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.jsonl_tail import EventTail, json_object

START, PROGRESS, DONE, ERROR = "start", "progress", "done", "error"
PREVIEW, WRITTEN, SKIPPED, FAILED = "preview", "written", "skipped", "failed"  # a progress event's status


@dataclass(frozen=True)
class CaptionStart:
    total: int
    model: str = ""
    dry_run: bool = False


@dataclass(frozen=True)
class CaptionProgress:
    done: int
    total: int
    path: str
    status: str
    caption: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class CaptionDone:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    stopped: bool = False
    seconds: float = 0.0


@dataclass(frozen=True)
class CaptionError:
    msg: str


CaptionEvent = CaptionStart | CaptionProgress | CaptionDone | CaptionError


def parse_caption_event(line: str) -> CaptionEvent | None:
    """One line as its record; None for a line that is not a known event (a newer writer's kind, or garbage)."""
    return caption_event(json_object(line))


def caption_event(data: dict[str, Any] | None) -> CaptionEvent | None:
    """A parsed line as its record; None for what is not a known event."""
    if data is None:
        return None
    try:
        return _record(data)
    except (KeyError, TypeError, ValueError):
        return None


def _record(data: dict[str, Any]) -> CaptionEvent | None:
    kind = data.get("event")
    if kind == START:
        return CaptionStart(int(data["total"]), str(data.get("model", "")), bool(data.get("dry_run", False)))
    if kind == PROGRESS:
        return CaptionProgress(int(data["done"]), int(data["total"]), str(data["path"]), str(data["status"]),
                               data.get("caption"), data.get("reason"))
    if kind == DONE:
        return CaptionDone(int(data.get("written", 0)), int(data.get("skipped", 0)), int(data.get("failed", 0)),
                           bool(data.get("stopped", False)), float(data.get("seconds", 0.0)))
    if kind == ERROR:
        return CaptionError(str(data["msg"]))
    return None


class CaptionEventReader(EventTail[CaptionEvent]):
    """Reads an events file from where the last call stopped; only complete lines (ending in a newline)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, caption_event)
