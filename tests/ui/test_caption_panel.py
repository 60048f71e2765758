"""The Dataset tab's Auto-caption panel in a real browser, with a tiny real ONNX tagger (training/caption/tiny.py):
preview writes nothing, Caption all writes captions the editor then shows, Stop keeps what was written, a bad
model folder is one line; the model list offers the user's folders and the known models, says when a hub model
needs the internet, and follows the preset picked on the Model tab. Skipped without Debian's Chromium."""

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
    choose_model(page, "A folder…")
    page.locator("#autocap-model input, #autocap-model textarea").first.fill(model)


def choose_model(page, label: str) -> None:
    page.locator("#autocap-choice input").click()
    page.get_by_role("option", name=label, exact=True).click()


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
    expect(page.locator("#autocap-stop")).to_be_disabled()  # nothing to stop yet
    page.locator("#autocap-run").click()
    expect(page.locator("#autocap-run")).to_be_disabled()  # one job at a time: Stop is the button that acts
    expect(page.locator("#autocap-stop")).to_be_enabled()
    # Stop once at least one caption is written (the status counts images handled).
    expect(page.locator("#autocap-status")).to_contain_text(re.compile(rf"Captioning: [1-9]\d* of {total} "),
                                                            timeout=60_000)
    # A reloaded page follows the running job once the panel is opened.
    open_app(page, dry_app.url)
    page.locator("#autocap-section").get_by_text("Auto-caption").first.click()
    expect(page.locator("#autocap-status")).to_contain_text(re.compile(rf"Captioning: [1-9]\d* of {total} "))
    page.locator("#autocap-stop").click()
    expect(page.locator("#autocap-status")).to_contain_text("Stopped after", timeout=60_000)
    expect(page.locator("#autocap-run")).to_be_enabled()
    expect(page.locator("#autocap-stop")).to_be_disabled()
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


def test_the_model_list_offers_a_tagger_folder_put_under_models_taggers(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    mine = save_tiny_tagger(dry_app.settings.data_dir / "models" / "taggers" / "my-wd", TAGS, size=12)
    try:
        dataset = red_dataset(tmp_path / "foxes", 2)
        open_app(page, dry_app.url)
        page.locator(BOX).first.fill(str(dataset))
        page.locator("#dataset-load").click()
        expect(page.locator("#dataset-message")).to_contain_text("foxes: 2 image(s)", timeout=60_000)
        page.locator("#autocap-section").get_by_text("Auto-caption").first.click()
        page.locator("#autocap-choice input").click()
        options = page.get_by_role("option")
        expect(options.first).to_have_attribute("aria-label", "local: my-wd")  # first: a folder works offline
        expect(options.last).to_have_attribute("aria-label", "A folder…")
        expect(page.get_by_role("option", name="SmilingWolf/wd-eva02-large-tagger-v3 (about 1.3 GB)")).to_be_visible()
        options.first.click()
        expect(page.locator("#autocap-model-note")).to_contain_text(f"Folder {mine}: loads offline")
        page.locator("#autocap-preview").click()
        expect(page.locator("#autocap-status")).to_contain_text("Preview: nothing written", timeout=60_000)
        expect(page.locator("#autocap-gallery")).to_contain_text(f"img000.png: {RED_CAPTION}")
    finally:
        shutil.rmtree(mine)  # the later tests' default model is the catalogue's again


def test_a_hub_model_offline_says_it_needs_the_internet_once(page, dry_app, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # the model is surely not cached
    dataset = red_dataset(tmp_path / "foxes", 2)
    open_panel(page, dry_app.url, dataset, "", 2)
    choose_model(page, "SmilingWolf/wd-vit-tagger-v3 (about 380 MB)")
    note = page.locator("#autocap-model-note")
    expect(note).to_contain_text("SmilingWolf/wd-vit-tagger-v3 needs the internet once")
    expect(note).to_contain_text(str(dry_app.settings.data_dir / "models" / "taggers"))
    expect(page.locator("#autocap-model")).to_be_hidden()
    # Preview anyway: the captioner's own one line says the same, no traceback.
    page.locator("#autocap-preview").click()
    status = page.locator("#autocap-status")
    expect(status).to_contain_text("the hub is offline", timeout=60_000)
    text = status.inner_text().strip()
    assert len(text.splitlines()) == 1 and "Traceback" not in text and "hf download" in text
    assert captions(dataset) == {}


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def pick_preset(page, name: str) -> None:
    open_tab(page, "Model & preset")
    page.locator("#preset input").click()
    page.get_by_role("option", name=name).click()
    open_tab(page, "Dataset")


def expect_kind(page, kind: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(f"#autocap-kind input[value='{kind}']")).to_be_checked()


def test_the_preset_picked_sets_the_caption_kind_and_model(page, dry_app, monkeypatch):
    from playwright.sync_api import expect

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a hub model can be fetched: the preset's own is chosen
    open_app(page, dry_app.url)
    page.locator("#autocap-section").get_by_text("Auto-caption").first.click()
    pick_preset(page, "SD1.5 photoreal")
    expect_kind(page, "captioner")
    expect(page.locator("#autocap-choice input")).to_have_value("florence-community/Florence-2-base (about 1.1 GB)")
    expect(page.locator("#autocap-suggested")).to_contain_text("SD1.5 photoreal: natural sentences")
    expect(page.locator("#autocap-prompt input")).to_have_attribute("placeholder", "empty: <DETAILED_CAPTION>")
    pick_preset(page, "SD1.5 anime")
    expect_kind(page, "tagger")
    expect(page.locator("#autocap-choice input")).to_have_value("SmilingWolf/wd-vit-tagger-v3 (about 380 MB)")
    expect(page.locator("#autocap-suggested")).to_contain_text("SD1.5 anime: booru tags suit anime bases")
    # A reloaded page follows the saved preset too.
    pick_preset(page, "SDXL photoreal")
    open_app(page, dry_app.url)
    page.locator("#autocap-section").get_by_text("Auto-caption").first.click()
    expect_kind(page, "captioner")
    expect(page.locator("#autocap-suggested")).to_contain_text("SDXL photoreal")


def test_a_kind_chosen_by_hand_is_kept_when_a_preset_is_picked(page, dry_app):
    from playwright.sync_api import expect

    open_app(page, dry_app.url)
    page.locator("#autocap-section").get_by_text("Auto-caption").first.click()
    pick_preset(page, "SD1.5 photoreal")
    expect_kind(page, "captioner")
    page.locator("#autocap-kind").get_by_text("tagger", exact=True).click()
    expect(page.locator("#autocap-choice input")).to_have_value(re.compile(r"^SmilingWolf/wd-vit-tagger-v3"))
    pick_preset(page, "SDXL photoreal")
    expect(page.locator("#autocap-suggested")).to_contain_text("Your choice here is kept; the preset suggests the "
                                                               "captioner florence-community/Florence-2-base")
    expect_kind(page, "tagger")
    expect(page.locator("#autocap-choice input")).to_have_value(re.compile(r"^SmilingWolf/wd-vit-tagger-v3"))
