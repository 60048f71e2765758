"""The Dataset tab in a real browser: the one dataset folder box (the form's train_data_dir), load, check, click an
image to preview it large and edit its caption, step through the images, the regularisation folder beside it.
Skipped without Debian's Chromium."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import make_image_dataset
from ui_helpers import ARTIFACTS, NOISE_FILTERS, open_app

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]
BOX = "#cfg-train_data_dir input, #cfg-train_data_dir textarea"  # the dataset folder: the form's train_data_dir
REG_BOX = "#cfg-reg_data_dir input, #cfg-reg_data_dir textarea"  # the regularisation folder: reg_data_dir


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
    open_app(page, dry_app.url)
    page.locator(BOX).first.fill(str(dataset))
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

    # Typing another folder into the box reloads the view (a preset, TOML or the demo changing it does too).
    other = make_dataset(tmp_path / "other")
    (other / "10_fox" / "c.png").unlink()
    page.locator(BOX).first.fill(str(other))
    expect(page.locator("#dataset-message")).to_contain_text("2 image(s) in 1 concept folder(s)")


def test_upload_then_pick_the_dataset_in_the_explorer(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    source = make_dataset(tmp_path / "src") / "10_fox"
    open_app(page, dry_app.url)
    page.locator("#dataset-upload-section").get_by_text("Upload images").click()
    page.locator("#dataset-upload input[type=file]").set_input_files([source / "a.png", source / "a.txt"])
    page.locator("#dataset-name input").fill("browser set")
    page.locator("#dataset-concept input").fill("fox")
    page.locator("#dataset-import").click()
    root = dry_app.settings.data_dir / "datasets" / "browser set"
    expect(page.locator("#dataset-message")).to_contain_text(f"Imported 1 image(s) and 1 caption(s) into {root}")
    assert (root / "10_fox" / "a.txt").read_text(encoding="utf-8") == "fox, photo a"

    page.locator(BOX).first.fill("")
    page.locator("#dataset-explorer-section").get_by_text("Pick an uploaded dataset").click()
    explorer = page.locator("#dataset-explorer")
    explorer.locator("li", has_text="browser set").locator("[aria-label='expand directory']").first.click()
    explorer.locator("input[type=checkbox]").first.check()  # the '.' entry: the dataset folder itself
    expect(page.locator(BOX).first).to_have_value(str(root))
    expect(page.locator("#dataset-message")).to_contain_text("1 image(s) in 1 concept folder(s)")


def test_one_dataset_folder_is_loaded_checked_and_nowhere_else(page, dry_app, tmp_path):
    """The folder typed on the Dataset tab is the one Check dataset checks; a folder without images never reads
    "ready"; the Model tab has no second folder box."""
    from playwright.sync_api import expect

    dataset = make_dataset(tmp_path / "foxes")
    empty = tmp_path / "empty"
    (empty / "10_fox").mkdir(parents=True)
    open_app(page, dry_app.url)
    box = page.locator(BOX).first
    expect(box).to_be_visible()  # on the Dataset tab, the first one shown
    assert page.locator("#dataset-folder").count() == 0
    box.fill(str(dataset))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-message")).to_contain_text("3 image(s) in 1 concept folder(s)")
    page.locator("#dataset-check-btn").click()
    report = page.locator("#dataset-report")
    expect(report).to_contain_text(f"{dataset.resolve()}: 3 image(s)")

    box.fill(str(empty))
    expect(page.locator("#dataset-message")).to_contain_text(f"no training images in {empty}")
    page.locator("#dataset-check-btn").click()
    expect(report).to_contain_text(f"no training images in {empty}")
    expect(report).to_contain_text("A dataset folder looks like this")
    expect(report).not_to_contain_text("ready")
    ARTIFACTS.mkdir(exist_ok=True)
    report.screenshot(path=str(ARTIFACTS / "dataset-no-images.png"))

    page.get_by_role("tab", name="Model & preset").click()
    expect(page.locator("#section-dataset")).to_be_visible()
    assert page.locator("#section-dataset #cfg-train_data_dir").count() == 0


def make_many(root: Path, count: int) -> Path:
    """``count`` 640x480 images with captions in one concept folder (names sort in order: img00, img01...)."""
    folder = root / "5_cat"
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (640, 480), ((i * 8) % 256, 90, 160)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"cat number {i}", encoding="utf-8")
    return root


def test_preview_shows_the_clicked_image_large_and_prev_next_step_by_image(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    from app.datasets import PAGE_SIZE

    dataset = make_many(tmp_path / "cats", PAGE_SIZE + 6)
    open_app(page, dry_app.url)
    page.locator(BOX).first.fill(str(dataset))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-page")).to_contain_text("Page 1 of 2")
    name, caption, position = (page.locator("#caption-file input"), page.locator("#caption-text textarea"),
                               page.locator("#dataset-position"))
    preview = page.locator("#dataset-preview img")
    highlighted = page.locator("#dataset-gallery .thumbnail-item.selected")

    page.locator("#dataset-gallery img").nth(1).click()
    expect(name).to_have_value("5_cat/img01.png")
    expect(caption).to_have_value("cat number 1")
    expect(position).to_contain_text(f"Image 2 of {PAGE_SIZE + 6}")
    expect(highlighted).to_have_attribute("aria-label", f"Thumbnail 2 of {PAGE_SIZE}")
    expect(preview).to_be_visible()
    page.wait_for_function("() => document.querySelector('#dataset-preview img').naturalWidth === 640")

    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img02.png")
    expect(caption).to_have_value("cat number 2")
    expect(highlighted).to_have_attribute("aria-label", f"Thumbnail 3 of {PAGE_SIZE}")
    page.locator("#dataset-prev").click()
    expect(name).to_have_value("5_cat/img01.png")

    # The last image of page 1, then Next: the selection crosses to page 2 and the gallery follows.
    page.locator("#dataset-gallery img").nth(PAGE_SIZE - 1).click()
    expect(name).to_have_value(f"5_cat/img{PAGE_SIZE - 1:02d}.png")
    page.locator("#dataset-next").click()
    expect(name).to_have_value(f"5_cat/img{PAGE_SIZE:02d}.png")
    expect(page.locator("#dataset-page")).to_contain_text("Page 2 of 2")
    expect(page.locator("#dataset-gallery img")).to_have_count(6)
    expect(highlighted).to_have_attribute("aria-label", "Thumbnail 1 of 6")
    expect(caption).to_have_value(f"cat number {PAGE_SIZE}")

    # The arrow keys do the same while no text box has the focus.
    page.locator("#dataset-position").click()
    page.keyboard.press("ArrowLeft")
    expect(name).to_have_value(f"5_cat/img{PAGE_SIZE - 1:02d}.png")
    expect(page.locator("#dataset-page")).to_contain_text("Page 1 of 2")
    page.keyboard.press("ArrowRight")
    expect(name).to_have_value(f"5_cat/img{PAGE_SIZE:02d}.png")

    # The caption editor beside the preview saves the previewed image's caption.
    caption.fill("a cat on page two")
    page.locator("#caption-save").click()
    expect(page.locator("#caption-message")).to_contain_text(f"Saved img{PAGE_SIZE:02d}.txt")
    assert (dataset / "5_cat" / f"img{PAGE_SIZE:02d}.txt").read_text(encoding="utf-8") == "a cat on page two"

    # The gallery still pages on its own; the selection stays.
    page.locator("#dataset-page-prev").click()
    expect(page.locator("#dataset-page")).to_contain_text("Page 1 of 2")
    expect(name).to_have_value(f"5_cat/img{PAGE_SIZE:02d}.png")
    expect(highlighted).to_have_count(0)  # the selected image is on the other page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tab-dataset-preview.png"), full_page=True)


def test_uploads_stay_in_the_data_folder_and_go_after_the_import(page, dry_app, tmp_path):
    """Gradio keeps a copy of every upload: it lands under the data folder, never the system temp folder, and is
    deleted once imported."""
    from playwright.sync_api import expect
    from ui_helpers import wait_for

    name = f"upload-{uuid.uuid4().hex[:12]}.png"  # unique: the system temp folder is shared with other runs
    Image.new("RGB", (96, 64), (10, 120, 200)).save(tmp_path / name)
    gradio_dir = dry_app.settings.data_dir / "cache" / "gradio"
    open_app(page, dry_app.url)
    page.locator("#dataset-upload-section").get_by_text("Upload images").click()
    page.locator("#dataset-upload input[type=file]").set_input_files([tmp_path / name])
    copies = wait_for(lambda: list(gradio_dir.rglob(name)))
    assert len(copies) == 1
    system_copies = Path(tempfile.gettempdir(), "gradio")
    assert not (system_copies.is_dir() and list(system_copies.rglob(name)))

    page.locator("#dataset-name input").fill("uploaded once")
    page.locator("#dataset-concept input").fill("sky")
    page.locator("#dataset-import").click()
    root = dry_app.settings.data_dir / "datasets" / "uploaded once"
    expect(page.locator("#dataset-message")).to_contain_text(f"Imported 1 image(s) and 0 caption(s) into {root}")
    assert (root / "10_sky" / name).is_file()
    assert not list(gradio_dir.rglob(name))
    assert not copies[0].parent.exists()  # nor the folder Gradio made for it


def test_the_reg_folder_is_summarised_and_counted_by_the_check(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    train = make_image_dataset(tmp_path / "train", {"5_cat": 3})
    reg = make_image_dataset(tmp_path / "reg", {"1_person": 4}, captions=False)
    open_app(page, dry_app.url)
    page.locator(BOX).first.fill(str(train))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-message")).to_contain_text("3 image(s) in 1 concept folder(s)")

    page.locator(REG_BOX).first.fill(str(reg))
    expect(page.locator("#dataset-reg-message")).to_contain_text(
        "Regularisation: 4 image(s) in 1 concept folder(s) (1_person ×1: 4)")
    page.locator("#dataset-check-btn").click()
    report = page.locator("#dataset-report")
    # 3 images x 5 repeats = 15, and kohya's balance brings the 4 regularisation images up to 15 as well.
    expect(report).to_contain_text("15 training images + 15 regularisation images (of 4")
    expect(report).to_contain_text("1_person (regularisation)")

    page.locator(REG_BOX).first.fill(str(tmp_path / "missing"))
    expect(page.locator("#dataset-reg-message")).to_contain_text("Regularisation folder not found")
