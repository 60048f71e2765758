"""Console output of ``python launch.py``: Gradio's own lines, minus the one that offers what we never do."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

SHARE_HINT = "* To create a public link"


@contextlib.contextmanager
def without_share_hint() -> Iterator[None]:
    """Drop only Gradio's "To create a public link, set `share=True`" line: it suggests sharing without a login,
    which launch.py refuses (--share needs --auth). Gradio 6.31 prints it whenever share is off and has no switch
    for it except quiet=True, which would also hide its other output (the local URL, warnings)."""
    real = sys.stdout
    sys.stdout = line_filter = LineFilter(real, SHARE_HINT)
    try:
        yield
    finally:
        sys.stdout = real
        line_filter.flush()  # a last line without its newline yet


class LineFilter:
    """A stdout stand-in that forwards every complete line except those starting with ``drop``. Lines are held
    until their newline (print writes the text and the newline separately); a lock keeps threads' lines whole."""

    def __init__(self, target: Any, drop: str) -> None:
        self.target, self.drop, self.partial = target, drop, ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.partial += text
            *lines, self.partial = self.partial.split("\n")
            for line in lines:
                if not line.startswith(self.drop):
                    self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self.partial and not self.drop.startswith(self.partial[: len(self.drop)]):
                self.target.write(self.partial)  # cannot become the dropped line any more: let it out
                self.partial = ""
        self.target.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno ... of the real stream
        return getattr(self.target, name)
