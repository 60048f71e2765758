"""What a user sees at launch: the device line (console and page header) and the console output of launch.py."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
import urllib.request

import pytest
from gradio_client import Client
from timing import scaled
from ui_helpers import NOISE_FILTERS, launched, wait_for

from app.console import SHARE_HINT, LineFilter
from app.device import CPU_ONLY, NO_TORCH, PENDING, DeviceProbe, describe, parse_report

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]

BASE = {"python": "3.11.7", "system": "Linux", "torch": "2.4.1", "cuda": None, "gpus": [], "mps": False,
        "error": None}


def test_device_line_for_each_kind_of_machine():
    rtx = {"name": "NVIDIA GeForce RTX 4090", "memory_gib": 23.6, "bf16": True}
    one = describe(BASE | {"cuda": "12.4", "gpus": [rtx]})
    assert one == "GPU: NVIDIA GeForce RTX 4090, 24 GB · torch 2.4.1 · CUDA 12.4"
    two = describe(BASE | {"cuda": "12.4", "gpus": [rtx, rtx | {"bf16": None}]})
    assert two.startswith("2 GPUs: NVIDIA GeForce RTX 4090, 24 GB + NVIDIA GeForce RTX 4090, 24 GB")
    old = describe(BASE | {"cuda": "11.8", "gpus": [{"name": "Tesla T4", "memory_gib": 14.6, "bf16": False}]})
    assert old.endswith("no bf16: use mixed_precision fp16")
    assert describe(BASE) == f"{CPU_ONLY} · torch 2.4.1"
    assert describe(BASE | {"mps": True}).startswith("No CUDA GPU; an Apple GPU (MPS) is available")
    assert describe(BASE | {"torch": None, "error": "torch is not installed"}) == NO_TORCH
    broken = describe(BASE | {"error": "the GPU check failed: driver too old"})
    assert broken.endswith("the GPU check failed: driver too old")


def test_parse_report_takes_the_last_line_and_refuses_garbage():
    assert parse_report('note: something\n{"torch": "2.4.1", "gpus": []}\n').startswith(CPU_ONLY)
    for bad in ("", "not json", "[1, 2]"):
        with pytest.raises(ValueError):
            parse_report(bad)


def test_probe_reports_this_machine_once_in_the_background():
    import torch

    printed: list[str] = []
    probe = DeviceProbe(echo=printed.append)
    assert probe.line == PENDING and not probe.ready
    assert probe.start() is probe.start()  # a second start does not run a second check
    assert probe.wait(120)
    expected = "GPU: " if torch.cuda.is_available() else CPU_ONLY
    assert probe.line.startswith(expected) and f"torch {torch.__version__}" in probe.line
    assert printed == [f"Device: {probe.line}"]


def test_probe_failure_and_timeout_are_one_line():
    failing = DeviceProbe([sys.executable, "-c", "import sys; print('half'); sys.exit('error: no driver')"],
                          echo=lambda _: None).start()
    assert failing.wait(60) and failing.line == "Could not check the device: error: no driver"
    slow = DeviceProbe([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5, echo=lambda _: None)
    assert slow.start().wait(30) and slow.line == "Could not check the device: no answer within 0.5 s"


def test_page_header_shows_the_device_line(dry_app):
    client = Client(dry_app.url, verbose=False)
    line = wait_for(lambda: (text := client.predict(api_name="/device_report")[0]) != PENDING and text,
                    timeout=120, every=1.0)
    assert line.startswith(("GPU: ", "2 GPUs", CPU_ONLY, "No CUDA GPU")) and "torch " in line


def test_line_filter_drops_only_the_share_hint():
    out = io.StringIO()
    filtered = LineFilter(out, SHARE_HINT)
    print("* Running on local URL:  http://127.0.0.1:7860", file=filtered)
    print("* To create a public link, set `share=True` in `launch()`.", file=filtered)
    filtered.write("partial ")
    filtered.write("line\n")
    filtered.write("no newline yet")
    filtered.flush()
    assert out.getvalue() == "* Running on local URL:  http://127.0.0.1:7860\npartial line\nno newline yet"


def test_launch_prints_the_url_and_the_device_and_never_offers_share(tmp_path):
    with launched(tmp_path / "data") as app:
        ready = app.ready_line()
        # Measured, not asserted: how long a user waits for the page (a few seconds on an idle 2-core CPU).
        print(f"launch.py ready in {time.monotonic() - app.started:.1f} s")
        assert app.url in ready and str(tmp_path / "data") in ready
        with urllib.request.urlopen(app.url, timeout=scaled(10)) as page:
            assert page.status == 200 and b"LoraForge" in page.read()
        wait_for(lambda: any(ln.startswith("Device: ") for ln in app.lines), timeout=120)
    assert f"Running on local URL:  http://127.0.0.1:{app.port}" in app.output
    assert "share=True" not in app.output and "public link" not in app.output


@pytest.mark.slow
def test_launch_runs_the_queue_unattended_and_sigterm_stops_the_run_with_its_reason(tmp_path):
    """No page is open: launch.py's own thread starts each queued job when the one before ends. SIGTERM to
    launch.py stops the running run so it saves its LoRA and state, and the run's status then says why it stopped;
    the job still queued waits for the user at the next start."""
    from app.runs import replay
    from app.supervisor import JobSupervisor

    data = tmp_path / "data"
    env = dict(os.environ, LORAFORGE_DRY_RUN_STEP_SECONDS="0.05")
    with launched(data, "--dry-run", env=env) as app:
        client = Client(app.url, verbose=False)
        texts = [client.predict(output_name="first", max_train_steps=20, api_name="/start_run")[0],
                 client.predict(output_name="second", max_train_steps=5, api_name="/queue_run")[0],
                 client.predict(output_name="third", max_train_steps=5000, api_name="/queue_run")[0],
                 client.predict(output_name="fourth", max_train_steps=5, api_name="/queue_run")[0]]
        assert texts[0].startswith("**started**") and all(t.startswith("**queued**") for t in texts[1:]), texts
        runs = {name: next((data / "runs" / name).iterdir()) for name in ("first", "second", "third", "fourth")}
        wait_for(lambda: replay(runs["second"]).terminal == "done", timeout=60)  # nobody polled: launch.py did
        wait_for(lambda: replay(runs["third"]).step > 2, timeout=60)
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(timeout=scaled(60)) == 0
    output = app.output
    assert "Closing LoraForge (SIGTERM)" in output and "1 queued run stay queued" in output, output
    after = JobSupervisor(data, dry_run=True)  # the next start of LoraForge
    third = after.poll(runs["third"])
    assert third.status == "stopped" and third.state.state_path
    assert third.status_text.startswith("stopped: LoraForge was closed (SIGTERM); the LoRA and state were saved")
    assert f"third · {runs['third'].name}: {third.status_text}" in output
    fourth = after.poll(runs["fourth"])
    assert fourth.status == "queued" and fourth.status_text == "queued (waiting for you since the restart)"


def test_the_served_queue_idles_without_spinning(tmp_path):
    """Item 17: Gradio's queue loop would look for events every 1 ms with nothing to do; launch() makes it 50 ms
    (tests/ui/idle_cpu.py measures the whole process: docs/benchmarks.md)."""
    from app.main import build_app, calm_idle_queue
    from app.settings import Settings
    from app.supervisor import JobSupervisor

    settings = Settings(data_dir=tmp_path, open_browser=False, dry_run=True)
    demo = build_app(settings, JobSupervisor(tmp_path, dry_run=True)).queue(default_concurrency_limit=1)
    calm_idle_queue(demo)
    assert demo._queue.sleep_when_free >= 0.05 and demo._queue.progress_update_sleep_when_free >= 0.1
