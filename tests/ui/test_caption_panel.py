"""The Dataset tab's Auto-caption panel in a real browser, with a tiny real ONNX tagger (training/caption/tiny.py):
preview writes nothing, Caption all writes captions the editor then shows, Stop keeps what was written, a bad
model folder is one line. Skipped without Debian's Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from ui_helpers import NOISE_FILTERS, open_app, wait_for

from training.caption.tiny import TinyTag, save_tiny_tagger
from training.contract.caption_events import CaptionDone, CaptionEventReader, CaptionProgress, CaptionStart

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]
BOX = "#cfg-train_data_dir input, #cfg-train_data_dir textarea"
TAGS = [TinyTag("red_theme", 0, channel=2), TinyTag("long_hair", 0, bias=0.6), TinyTag("faint_tag", 0, bias=0.1)]
RED_CAPTION = "red theme, long hair"


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory) -> Path:
    return save_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny", TAGS, size=12)


def red_dataset(root: Path, count: int, side: int = 32) -> Path:
    """``count`` red images in one concept folder: one written, the rest copies (quick to make)."""
    folder = root / "10_fox"
    folder.mkdir(parents=True)
    first = folder / "img000.png"
    Image.new("RGB", (side, side), (255, 0, 0)).save(first)
    for i in range(1, count):
        shutil.copy(first, folder / f"img{i:03d}.png")
    return root


def captions(root: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.txt"))}


def open_panel(page, url: str, dataset: Path, model: str, count: int) -> None:
    from playwright.sync_api import expect

    open_app(page, url)
    page.locator(BOX).first.fill(str(dataset))
    page.locator("#dataset-load").click()
    # The page may first show the folder the previous test left in the box: wait for this one.
    expect(page.locator("#dataset-message")).to_contain_text(f"{dataset.name}: {count} image(s)", timeout=60_000)
    page.locator("#autocap-section").get_by_text("Auto-caption").first.click()
    page.locator("#autocap-model input, #autocap-model textarea").first.fill(model)


def test_preview_writes_nothing_and_shows_the_proposed_captions(page, dry_app, tmp_path, tiny_tagger):
    from playwright.sync_api import expect

    dataset = red_dataset(tmp_path / "foxes", 3)
    (dataset / "10_fox" / "img001.txt").write_text("kept as is", encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    open_panel(page, dry_app.url, dataset, str(tiny_tagger), 3)
    page.locator("#autocap-preview").click()
    expect(page.locator("#autocap-status")).to_contain_text("Preview: nothing written", timeout=60_000)
    expect(page.locator("#autocap-gallery")).to_contain_text(f"img000.png: {RED_CAPTION}")
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before
    assert captions(dataset) == {"img001.txt": "kept as is"}


def test_caption_all_writes_captions_that_the_editor_then_shows(page, dry_app, tmp_path, tiny_tagger):
    from playwright.sync_api import expect

    dataset = red_dataset(tmp_path / "foxes", 3)
    open_panel(page, dry_app.url, dataset, str(tiny_tagger), 3)
    page.locator("#autocap-trigger input, #autocap-trigger textarea").first.fill("foxy")
    page.locator("#autocap-run").click()
    expect(page.locator("#autocap-status")).to_contain_text("Done: 3 written, 0 skipped, 0 failed of 3",
                                                            timeout=60_000)
    assert captions(dataset) == {f"img00{i}.txt": f"foxy, {RED_CAPTION}" for i in range(3)}
    # The folder's view reloaded: the gallery labels and the caption editor show the new captions.
    expect(page.locator("#dataset-gallery")).to_contain_text(f"foxy, {RED_CAPTION}")
    page.locator("#dataset-gallery img").nth(1).click()
    expect(page.locator("#caption-text textarea")).to_have_value(f"foxy, {RED_CAPTION}")


def test_stop_midway_keeps_what_was_written(page, dry_app, tmp_path, tiny_tagger):
    from playwright.sync_api import expect

    total = 500  # about 20 s of captioning: time to reload the page and press Stop
    dataset = red_dataset(tmp_path / "many", total, side=1500)  # large images: each takes a moment to read
    open_panel(page, dry_app.url, dataset, str(tiny_tagger), total)
    page.locator("#autocap-run").click()
    # Stop once at least one caption is written (the status counts images handled).
    expect(page.locator("#autocap-status")).to_contain_text(re.compile(rf"Captioning: [1-9]\d* of {total} "),
                                                            timeout=60_000)
    # A reloaded page follows the running job once the panel is opened.
    open_app(page, dry_app.url)
    page.locator("#autocap-section").get_by_text("Auto-caption").first.click()
    expect(page.locator("#autocap-status")).to_contain_text(re.compile(rf"Captioning: [1-9]\d* of {total} "))
    page.locator("#autocap-stop").click()
    expect(page.locator("#autocap-status")).to_contain_text("Stopped after", timeout=60_000)
    written = captions(dataset)
    assert 0 < len(written) < total
    assert set(written.values()) == {RED_CAPTION}  # every kept caption is whole
    # What the panel's events file says was written is exactly what is on disk.
    events_file = _newest_events(dry_app.settings.data_dir)
    events = CaptionEventReader(events_file).read_new()
    assert isinstance(events[0], CaptionStart) and isinstance(events[-1], CaptionDone) and events[-1].stopped
    assert {Path(e.path).with_suffix(".txt").name for e in events
            if isinstance(e, CaptionProgress) and e.status == "written"} == set(written)


def _newest_events(data_dir: Path) -> Path:
    return max((data_dir / "cache" / "caption").glob("*/events.jsonl"), key=lambda p: p.stat().st_mtime_ns)


def test_a_bad_model_folder_is_one_line(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    dataset = red_dataset(tmp_path / "foxes", 2)
    empty = tmp_path / "not-a-tagger"
    empty.mkdir()
    open_panel(page, dry_app.url, dataset, str(empty), 2)
    page.locator("#autocap-preview").click()
    status = page.locator("#autocap-status")
    expect(status).to_contain_text("Not captioned:", timeout=60_000)
    text = wait_for(lambda: status.inner_text().strip())
    assert len(text.splitlines()) == 1 and "Traceback" not in text and str(empty) in text
    assert captions(dataset) == {}


def test_no_captioning_while_a_training_run_goes(page, dry_app, client, tmp_path, tiny_tagger):
    from playwright.sync_api import expect

    sup = dry_app.supervisor
    wait_for(lambda: not sup.poll().active, timeout=60)
    dataset = red_dataset(tmp_path / "foxes", 2)
    open_panel(page, dry_app.url, dataset, str(tiny_tagger), 2)
    assert client.predict(output_name="busy", max_train_steps=2000, api_name="/start_run")[0].startswith("**started")
    try:
        wait_for(lambda: sup.poll().step >= 1, timeout=30)
        page.locator("#autocap-run").click()
        expect(page.locator("#autocap-status")).to_contain_text("Not started: a training run is going")
        assert captions(dataset) == {}
    finally:
        client.predict(api_name="/stop_run")
        wait_for(lambda: not sup.poll().active, timeout=60)
