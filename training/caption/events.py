"""``--events FILE``: what a captioning run is doing, one JSON object a line, for a UI watching it.

Every line has ``event`` and ``t`` (Unix time). The kinds:

- ``start``: ``total`` (images to go through), ``model``, ``dry_run``.
- ``progress``: one per image: ``done`` (images handled so far), ``total``, ``path``, ``status`` (``written``,
  ``skipped``, ``failed`` or ``preview`` in a dry run), ``caption`` (written or proposed; absent when none),
  ``reason`` (why skipped or failed).
- ``done``: the run ended: ``written``, ``skipped``, ``failed`` (counts), ``stopped`` (true when Ctrl+C, SIGTERM or
  the stop file ended it early), ``seconds``.
- ``error``: bad input or a failure that ended the run: ``msg``, one line. The last line of a run is ``done`` or
  ``error``.

The file is appended to and flushed every line, so a reader may poll it while the run goes on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class EventLog:
    """Writes events to ``path``, or nowhere when ``path`` is None."""

    def __init__(self, path: Path | None) -> None:
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115 closed in close()

    def write(self, event: str, **fields: Any) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"event": event, "t": round(time.time(), 3), **fields}) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
