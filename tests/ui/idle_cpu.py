"""Benchmark, not a test: the UI process's CPU while a page is open and nothing runs.

``python tests/ui/idle_cpu.py [seconds]`` starts launch.py --dry-run on a temporary data folder, opens the page in
headless Chromium, waits for it to settle, then prints the CPU seconds launch.py used over the window (psutil).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from ui_helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main(window_s: float = 20.0) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        ui = subprocess.Popen([sys.executable, "launch.py", "--dry-run", "--no-browser", "--port", str(port),
                               "--data-dir", data], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_up(url)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page()
                page.goto(url)
                page.get_by_role("tab", name="Train").click()
                time.sleep(15)  # the page's first loads and the device check settle
                proc = psutil.Process(ui.pid)
                before = cpu_seconds(proc)
                time.sleep(window_s)
                used = cpu_seconds(proc) - before
                browser.close()
            print(f"launch.py idle with one page open: {used:.2f} CPU s over {window_s:g} s "
                  f"= {100 * used / window_s:.1f}% of a core")
        finally:
            ui.terminate()
            ui.wait(timeout=60)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
