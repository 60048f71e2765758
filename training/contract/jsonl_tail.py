"""Tailing a JSON-lines file that another process is appending to. Torch-free: the UI polls the trainer's
events.jsonl and the captioner's events file with it.

Each call hands out the complete lines written since the last one, once. A last line without its newline is the
writer mid-line: it is left in the file and read again, whole, by a later call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

NOT_JSON = None  # what ``new_records`` gives for a line that is not a JSON object


E = TypeVar("E")


class JsonlTail:
    """Reads ``path`` from the byte after the last complete line read so far; a missing file has no lines yet."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0

    def new_lines(self) -> list[str]:
        """The complete lines written since the last call, blank ones left out. Bytes that are not UTF-8 become
        U+FFFD, so one damaged line cannot stop the reading of those after it."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        lines = chunk[:end].decode("utf-8", errors="replace").split("\n")
        return [line for line in lines if line.strip()]

    def new_records(self) -> list[dict[str, Any] | None]:
        """``new_lines`` parsed: each a JSON object, or ``NOT_JSON`` (None) for a line that is not one."""
        return [json_object(line) for line in self.new_lines()]


def json_object(line: str) -> dict[str, Any] | None:
    """``line`` as a JSON object, or None when it is garbage or JSON of another shape."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class EventTail(Generic[E]):
    """The typed events appended to a JSON-lines file since the last call: each complete record through ``parse``,
    records it does not know (None) left out. The caption and tool jobs' readers are this with their own parser."""

    def __init__(self, path: Path, parse: Callable[[dict[str, Any] | None], E | None]) -> None:
        self.path = Path(path)
        self._tail = JsonlTail(self.path)
        self._parse = parse

    def read_new(self) -> list[E]:
        return [event for event in map(self._parse, self._tail.new_records()) if event is not None]
