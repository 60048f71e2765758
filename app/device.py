"""The device line at the top of the page: which GPU, CUDA and torch training will use, or that there is none.

Found once per UI process by a short child (``python -m training --env-report --json``) in a background thread: the
UI process never imports torch (docs/architecture.md), and neither the page nor the console waits for torch's few
seconds of import. Until the child answers, the line says it is still checking; the page refreshes it with a Timer.
No gradio here: the wiring is in app/main.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

PENDING = "Checking for a GPU…"
PROBE_TIMEOUT_S = 180.0  # a first torch import from a cold disk can take a minute
CPU_ONLY = "No CUDA GPU found: training would run on the CPU (very slow; fine for the demo)"
NO_TORCH = "torch is not installed: install the torch build for your GPU first (see README.md); training cannot start"


def describe(info: dict[str, Any]) -> str:
    """One line from ``env_info()``'s dict: GPU(s) with memory, torch and CUDA versions, or what is missing."""
    torch_version = info.get("torch")
    if not torch_version:
        return NO_TORCH
    gpus = info.get("gpus") or []
    versions = f"torch {torch_version}" + (f" · CUDA {info['cuda']}" if info.get("cuda") else "")
    if gpus:
        names = [f"{g.get('name', 'unknown GPU')}, {float(g.get('memory_gib') or 0):.0f} GB" for g in gpus]
        label = "GPU" if len(gpus) == 1 else f"{len(gpus)} GPUs"
        line = f"{label}: {' + '.join(names)} · {versions}"
        if gpus[0].get("bf16") is False:
            line += " · no bf16: use mixed_precision fp16"
    elif info.get("mps"):
        line = f"No CUDA GPU; an Apple GPU (MPS) is available · {versions}"
    else:
        line = f"{CPU_ONLY} · {versions}"
    return f"{line} · {info['error']}" if info.get("error") else line


def parse_report(stdout: str) -> str:
    """The device line from the child's output: its last line is the JSON object. Raises ValueError."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines:
        raise ValueError("the device check printed nothing")
    info = json.loads(lines[-1])
    if not isinstance(info, dict):
        raise ValueError("the device check did not print a JSON object")
    return describe(info)


def failure_line(reason: str) -> str:
    return f"Could not check the device: {reason}"


def probe_command() -> list[str]:
    return [sys.executable, "-m", "training", "--env-report", "--json"]


class DeviceProbe:
    """Runs the device check once, in a daemon thread; ``line`` is the answer so far (PENDING until then)."""

    def __init__(self, command: list[str] | None = None, timeout: float = PROBE_TIMEOUT_S,
                 echo: Callable[[str], None] | None = None) -> None:
        self.command = command or probe_command()
        self.timeout = timeout
        self.echo = echo or (lambda text: print(text, flush=True))
        self._line = PENDING
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> DeviceProbe:
        """Start the check unless it already runs or ran. Returns self, for ``DeviceProbe().start()``."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="device check", daemon=True)
                self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    @property
    def line(self) -> str:
        return self._line

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _run(self) -> None:
        try:
            self._line = self._check()
        finally:
            self._done.set()
        self.echo(f"Device: {self._line}")

    def _check(self) -> str:
        from app.supervisor import child_env  # the same environment the trainer gets

        try:
            out = subprocess.run(self.command, capture_output=True, text=True, timeout=self.timeout,
                                 env=child_env(), stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            return failure_line(f"no answer within {self.timeout:g} s")
        except OSError as err:
            return failure_line(str(err))
        if out.returncode != 0:
            last = next((ln for ln in reversed(out.stderr.splitlines()) if ln.strip()), "")
            return failure_line(last or f"exit status {out.returncode}")
        try:
            return parse_report(out.stdout)
        except ValueError as err:
            return failure_line(str(err))


_shared: DeviceProbe | None = None
_shared_lock = threading.Lock()


def shared_probe() -> DeviceProbe:
    """This process's one device check, started on first use (the machine does not change while the UI runs)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DeviceProbe().start()
        return _shared
