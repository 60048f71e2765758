"""The Dataset tab in a real browser: load a folder, click an image, edit and save its caption; the folder and the
form's train_data_dir follow each other. Skipped without Debian's Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from ui_helpers import ARTIFACTS, NOISE_FILTERS

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]



def make_dataset(root: Path) -> Path:
    colours = {"a": (220, 40, 40), "b": (40, 180, 60), "c": (40, 60, 220)}
    for i, (name, colour) in enumerate(colours.items()):
        path = root / "10_fox" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (128 + 64 * i, 128), colour).save(path)
        path.with_suffix(".txt").write_text(f"fox, photo {name}", encoding="utf-8")
    return root


def test_click_an_image_edit_and_save_its_caption(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    dataset = make_dataset(tmp_path / "foxes")
    page.goto(dry_app.url)
    page.locator("#dataset-folder textarea, #dataset-folder input").first.fill(str(dataset))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-message")).to_contain_text("3 image(s) in 1 concept folder(s)")
    expect(page.locator("#dataset-page")).to_contain_text("Page 1 of 1")

    page.locator("#dataset-gallery img").nth(1).click()
    expect(page.locator("#caption-file input")).to_have_value("10_fox/b.png")
    caption = page.locator("#caption-text textarea")
    expect(caption).to_have_value("fox, photo b")
    caption.fill("fox, photo b, snow")
    page.locator("#caption-save").click()
    expect(page.locator("#caption-message")).to_contain_text("Saved b.txt")
    assert (dataset / "10_fox" / "b.txt").read_text(encoding="utf-8") == "fox, photo b, snow"
    assert (dataset / "10_fox" / "a.txt").read_text(encoding="utf-8") == "fox, photo a"

    page.locator("#dataset-check-btn").click()
    expect(page.locator("#dataset-report")).to_contain_text("steps per epoch")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tab-dataset.png"), full_page=True)

    # Loading here set the form's train_data_dir; a change there (preset, TOML, typing) reloads this tab.
    page.get_by_role("tab", name="Model & preset").click()
    field = page.locator("#cfg-train_data_dir input, #cfg-train_data_dir textarea").first
    expect(field).to_have_value(str(dataset.resolve()))
    other = make_dataset(tmp_path / "other")
    (other / "10_fox" / "c.png").unlink()
    field.fill(str(other))
    field.blur()
    page.get_by_role("tab", name="Dataset").click()
    expect(page.locator("#dataset-folder textarea, #dataset-folder input").first).to_have_value(str(other.resolve()))
    expect(page.locator("#dataset-message")).to_contain_text("2 image(s) in 1 concept folder(s)")


def test_upload_then_pick_the_dataset_in_the_explorer(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    source = make_dataset(tmp_path / "src") / "10_fox"
    page.goto(dry_app.url)
    page.locator("#dataset-upload-section").get_by_text("Upload images").click()
    page.locator("#dataset-upload input[type=file]").set_input_files([source / "a.png", source / "a.txt"])
    page.locator("#dataset-name input").fill("browser set")
    page.locator("#dataset-concept input").fill("fox")
    page.locator("#dataset-import").click()
    root = dry_app.settings.data_dir / "datasets" / "browser set"
    expect(page.locator("#dataset-message")).to_contain_text(f"Imported 1 image(s) and 1 caption(s) into {root}")
    assert (root / "10_fox" / "a.txt").read_text(encoding="utf-8") == "fox, photo a"

    page.locator("#dataset-folder textarea, #dataset-folder input").first.fill("")
    page.locator("#dataset-explorer-section").get_by_text("Pick an uploaded dataset").click()
    explorer = page.locator("#dataset-explorer")
    explorer.locator("li", has_text="browser set").locator("[aria-label='expand directory']").first.click()
    explorer.locator("input[type=checkbox]").first.check()  # the '.' entry: the dataset folder itself
    expect(page.locator("#dataset-folder textarea, #dataset-folder input").first).to_have_value(str(root))
    expect(page.locator("#dataset-message")).to_contain_text("1 image(s) in 1 concept folder(s)")
