"""Control flags: a run is steered through empty files in ``<run>/control/`` (stop, sample, save).

Files rather than signals, because a UI cannot send Ctrl+C to a child on Windows and because a flag survives a UI
restart. The trainer checks them between steps (a few stat calls). Ctrl+C and SIGTERM set the same stop flag.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

from training.contract.layout import CONTROL_DIR

CONTROL_FLAGS = ("stop", "sample", "save")


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
