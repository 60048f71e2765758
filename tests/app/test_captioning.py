"""app.captioning with real ``python -m training.caption`` children on real files: one job at a time, Stop keeps
what was written, a bad setting is one line before any process starts, and no job while training holds the GPU."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from app.captioning import CaptionJobs, CaptionRequest
from training.caption.tiny import TinyTag, save_tiny_tagger
from training.contract.errors import UserError


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    return save_tiny_tagger(tmp_path_factory.mktemp("tagger") / "t", [TinyTag("red_theme", 0, channel=2)], size=12)


def red_images(root: Path, count: int, side: int) -> Path:
    folder = root / "10_fox"
    folder.mkdir(parents=True)
    Image.new("RGB", (side, side), (255, 0, 0)).save(folder / "img000.png")
    for i in range(1, count):
        shutil.copy(folder / "img000.png", folder / f"img{i:03d}.png")
    return root


def finished(jobs: CaptionJobs, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.poll()
        if not status.running:
            return status
        time.sleep(0.1)
    raise AssertionError("the captioning job did not end")


def test_one_job_at_a_time_and_stop_keeps_what_was_written(tmp_path, tagger):
    dataset = red_images(tmp_path / "ds", 200, 1500)
    jobs = CaptionJobs(tmp_path / "data", lambda: False)
    request = CaptionRequest(dataset, "tagger", str(tagger))
    jobs.start(request, preview=False)
    with pytest.raises(UserError, match="a captioning job is running"):
        jobs.start(request, preview=True)
    deadline = time.monotonic() + 120
    while jobs.poll().done < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    jobs.stop()
    status = finished(jobs)
    written = sorted(dataset.rglob("*.txt"))
    assert status.line.startswith("Stopped after") and not status.error
    assert 0 < len(written) < 200 and {p.read_text(encoding="utf-8") for p in written} == {"red theme"}
    assert status.line.startswith(f"Stopped after {status.done} of 200") and f"{len(written)} written" in status.line


def test_bad_settings_are_one_line_before_any_process(tmp_path, tagger):
    jobs = CaptionJobs(tmp_path / "data", lambda: False)
    with pytest.raises(UserError, match="give the tagger model"):
        jobs.start(CaptionRequest(tmp_path, "tagger", " "), preview=True)
    with pytest.raises(UserError, match="does not exist"):
        jobs.start(CaptionRequest(tmp_path / "nope", "tagger", str(tagger)), preview=True)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("events.jsonl"))


def test_a_model_that_cannot_load_ends_with_its_one_line_reason(tmp_path):
    dataset = red_images(tmp_path / "ds", 1, 16)
    jobs = CaptionJobs(tmp_path / "data", lambda: False)
    jobs.start(CaptionRequest(dataset, "tagger", str(tmp_path / "missing")), preview=True)
    status = finished(jobs)
    assert status.error and "missing" in status.line and "\n" not in status.line


def test_no_job_while_training_is_busy(tmp_path, tagger):
    dataset = red_images(tmp_path / "ds", 1, 16)
    jobs = CaptionJobs(tmp_path / "data", lambda: True)
    with pytest.raises(UserError, match="training run is going"):
        jobs.start(CaptionRequest(dataset, "tagger", str(tagger)), preview=False)
    assert not list(dataset.rglob("*.txt"))
