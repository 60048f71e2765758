"""Helpers for the UI tests: serve the real app in-process, stop its runs, wait for a condition."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timing import scaled

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

# Known noise with gradio 6.31 + pandas 3 (a Pandas4Warning from the queue, an unclosed event loop at teardown);
# everything else still shows.
NOISE_FILTERS = [
    "ignore::pandas.errors.Pandas4Warning",
    "ignore:unclosed event loop:ResourceWarning",
]
# The first cross-attention key projection: its input width tells SD1 (768) from SD2 (1024).
ATTN2_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by .ci/run
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # screenshots for a human to look at
STEP_SECONDS = "0.05"  # dry-run pace: a 40-step run takes about 2 s
SHOW = ("status", "progress", "bar", "chart", "guidance", "samples", "log", "timer", "picker")  # /show_run outputs


@dataclass
class UiApp:
    url: str
    settings: object
    supervisor: object


def serve(data_dir: Path, dry_run: bool) -> tuple[UiApp, object]:
    from app.main import build_app, launch_options
    from app.settings import Settings
    from app.supervisor import JobSupervisor

    settings = Settings(data_dir=data_dir, open_browser=False, dry_run=dry_run)
    supervisor = JobSupervisor(settings.data_dir, dry_run=dry_run)
    demo = build_app(settings, supervisor)
    demo.queue(default_concurrency_limit=1)
    options = launch_options(settings) | {"server_port": None, "prevent_thread_lock": True, "quiet": True}
    _, url, _ = demo.launch(**options)
    return UiApp(url, settings, supervisor), demo


def stop_all(supervisor) -> None:
    """Leave no trainer children behind: cancel queued jobs, stop running ones."""
    for _ in range(3):
        for summary in supervisor.discover():
            if summary.status in ("queued", "starting", "running"):
                supervisor.stop(summary.run_dir, grace_s=5)
        time.sleep(0.2)
    deadline = time.monotonic() + 15
    while any(s.running for s in supervisor.discover()) and time.monotonic() < deadline:
        time.sleep(0.2)


def open_app(page, url: str) -> None:
    """Open the page and wait until its load events are answered (the saved form restored, the run attached), as a
    user who starts typing a moment after the page appears: a field typed into before would be overwritten."""
    page.goto(url)
    page.locator("#form-ready [data-ready]").wait_for(state="attached")


def wait_for(predicate, timeout: float = 30.0, every: float = 0.2):
    """The predicate's first truthy value, polled until ``timeout`` seconds (times the test time factor)."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not reached within {timeout} s")


def write_header_only_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A valid .safetensors file with fp16 zeros: detection reads only the header, but the file is complete."""
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2
        for n in shape:
            size *= n
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def fill(page, selector: str, text: str) -> None:
    """Fill an input and make sure the value sticks: a freshly opened accordion mounts its fields a moment after
    they become visible, and a fill landing before that is lost."""
    field = page.locator(selector)
    for _ in range(20):
        field.fill(text)
        field.blur()
        page.wait_for_timeout(250)
        if field.input_value() == text:
            return
    raise AssertionError(f"{selector} did not keep {text!r}")


def show(client, run: str) -> dict[str, Any]:
    """What the Train tab shows for one run (a run folder, or FOLLOW)."""
    return dict(zip(SHOW, client.predict(run, api_name="/show_run"), strict=True))


def run_of(message: str) -> Path:
    """The run folder a start message names ("**started** · `<run dir>`")."""
    found = re.search(r"\*\*started\*\* · `([^`]+)`", message)
    assert found, message
    return Path(found[1])


def drawn_until_ended(client, drawn: dict[str, Any]) -> dict[str, Any] | None:
    """One poll like the page's timer. A poll leaves out (gr.skip) what has not changed since this session's last
    one, so ``drawn`` keeps what the page shows: the newest value of each output. Returned once the run ended."""
    from app.tabs.train_view import FOLLOW

    view = show(client, FOLLOW)
    drawn.update({k: v for k, v in view.items() if v != {"__type__": "update"}})
    return dict(drawn) if view["status"].startswith(("**done", "**failed")) else None


ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launched:
    """launch.py running in a child process: its port, its output lines so far, when it was started."""

    proc: subprocess.Popen
    port: int
    started: float
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ready_line(self) -> str | None:
        return next((ln for ln in self.lines if ln.startswith("LoraForge is ready")), None)


@contextlib.contextmanager
def launched(data_dir: Path, *flags: str, env: dict[str, str] | None = None,
             ready_timeout: float = 60) -> Iterator[Launched]:
    """``python launch.py --no-browser`` on a free port as a user starts it, once it says it is ready; at the end
    Ctrl+C (SIGINT) unless it has already exited, and its output is complete."""
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "launch.py", "--no-browser", "--port", str(port), "--data-dir",
                             str(data_dir), *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    app = Launched(proc, port, started)
    reader = threading.Thread(target=lambda: app.lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(app.ready_line, timeout=ready_timeout)
        yield app
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=scaled(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)
