"""TensorBoard for a run's logs: one ``tensorboard`` child process per log folder, started on demand, reused while it
lives, ended when the UI process exits.

The trainer logs to TensorBoard whenever tensorboard is installed in its Python: into ``<run>/logs`` unless the
run's ``logging_dir`` names another folder. No Gradio, no torch: the child is ``python -m tensorboard.main``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from training.contract.errors import UserError
from training.contract.layout import RunLayout

HOST = "127.0.0.1"  # TensorBoard serves the logs unauthenticated: this computer only
EVENT_FILES = "events.out.tfevents.*"
START_TIMEOUT_S = 120.0  # TensorBoard's first start imports a lot; on a busy 2-core machine that takes a while
STOP_GRACE_S = 5.0


def run_logs(run_dir: Path) -> Path:
    """Where the run's trainer wrote its TensorBoard logs: the job's ``logging_dir``, else ``<run>/logs``."""
    try:
        job = tomllib.loads(RunLayout(run_dir).job.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        job = {}
    folder = next((section.get("logging_dir") for section in job.values()
                   if isinstance(section, dict) and section.get("logging_dir")), None)
    return Path(folder).expanduser() if folder else RunLayout(run_dir).logs


def has_event_files(logs: Path) -> bool:
    return logs.is_dir() and next(logs.rglob(EVENT_FILES), None) is not None


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    """Whether the URL answers 200; straight to loopback, never through a proxy the environment names."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Board:
    process: subprocess.Popen
    url: str


class TensorBoards:
    """The TensorBoard children of this UI process, one per log folder."""

    def __init__(self) -> None:
        self._boards: dict[Path, Board] = {}
        self._lock = threading.Lock()
        atexit.register(self.close)

    def open(self, run_dir: Path) -> str:
        """The URL of a TensorBoard on the run's logs, started now unless one already serves them. A UserError says
        why not (not installed, no logs, did not start) and what to do."""
        logs = run_logs(run_dir)
        if not tensorboard_installed():
            raise UserError("TensorBoard is not installed in the UI's Python: `pip install tensorboard`, then start "
                            "a new run (the trainer logs to TensorBoard whenever it is installed)")
        if not has_event_files(logs):
            raise UserError(f"this run wrote no TensorBoard logs in {logs}: the trainer writes them only when "
                            "tensorboard is installed in its Python (dry runs write none); logging_dir sets the folder")
        with self._lock:
            board = self._boards.get(logs)
            if board is None or board.process.poll() is not None:
                board = self._boards[logs] = self._start(logs)
        return self._wait(board)

    def _start(self, logs: Path) -> Board:
        port = free_port()
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logs), "--host", HOST,
                   "--port", str(port)]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        return Board(process, f"http://{HOST}:{port}/")

    def _wait(self, board: Board) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if answers(board.url):
                return board.url
            if board.process.poll() is not None:
                raise UserError(f"TensorBoard exited at start (status {board.process.returncode}); run "
                                f"`{sys.executable} -m tensorboard.main --logdir <the run's logs>` to see why")
            time.sleep(0.3)
        raise UserError(f"TensorBoard did not answer within {START_TIMEOUT_S:g} s at {board.url}")

    def close(self) -> None:
        """End every TensorBoard child (at exit of the UI process)."""
        with self._lock:
            boards, self._boards = list(self._boards.values()), {}
        for board in boards:
            board.process.terminate()
        for board in boards:
            try:
                board.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    board.process.kill()


_shared: TensorBoards | None = None
_shared_lock = threading.Lock()


def shared_boards() -> TensorBoards:
    """The UI process's one registry (every page and tab shares its children)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TensorBoards()
        return _shared
