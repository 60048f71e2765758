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


def test_the_model_list_puts_the_users_folders_first_and_a_folder_last(tmp_path, tagger):
    from app.captioning import FOLDER_CHOICE, model_choices

    shutil.copytree(tagger, tmp_path / "models" / "taggers" / "mine")
    choices = model_choices(tmp_path, "tagger")
    assert choices[0] == ("local: mine", str(tmp_path / "models" / "taggers" / "mine"))
    assert choices[-1] == ("A folder…", FOLDER_CHOICE)
    assert ("SmilingWolf/wd-vit-tagger-v3 (about 380 MB)", "SmilingWolf/wd-vit-tagger-v3") in choices
    assert not any("Florence" in value for _, value in choices)  # the captioners are for the other kind
    assert model_choices(tmp_path, "captioner")[0][1] == "florence-community/Florence-2-base"


def test_offline_a_suggested_hub_model_not_cached_gives_way_to_the_users_folder(tmp_path, tagger, monkeypatch):
    from app.captioning import FOLDER_CHOICE, default_choice, model_of

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub = "SmilingWolf/wd-swinv2-tagger-v3"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert default_choice(tmp_path, "tagger", hub) == hub  # no folder of the user's: the note says what to do
    mine = shutil.copytree(tagger, tmp_path / "models" / "taggers" / "mine")
    assert default_choice(tmp_path, "tagger", hub) == str(mine)
    assert default_choice(tmp_path, "tagger") == str(mine)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert default_choice(tmp_path, "tagger", hub) == hub  # online it downloads once
    assert model_of(FOLDER_CHOICE, " /some/folder ") == "/some/folder" and model_of(hub, "/ignored") == hub


def test_the_progress_line_gives_the_time_left_from_the_pace_after_the_model_loaded():
    """Model loading (before the first image) does not count; the estimate appears once two more images finished."""
    from app.captioning import CaptionStatus, _apply
    from training.contract.caption_events import CaptionProgress, CaptionStart

    status = CaptionStatus(job_id="x", running=True)
    _apply(status, CaptionStart(100), now=0.0)
    lines = []
    for done, now in ((1, 60.0), (2, 62.0), (3, 64.0), (60, 178.0)):  # 60 s loading, then 2 s per image
        _apply(status, CaptionProgress(done, 100, f"img{done}.png", "written", "a caption"), now=now)
        lines.append(status.line)
    assert lines[:2] == ["Captioning: 1 of 100 image(s)", "Captioning: 2 of 100 image(s)"]
    assert lines[2] == "Captioning: 3 of 100 image(s) · about 3 min left"  # 97 images x 2 s
    assert lines[3] == "Captioning: 60 of 100 image(s) · about 80 s left"
