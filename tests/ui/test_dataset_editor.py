"""The Dataset tab's caption editor in a real browser: an edited caption is saved when the user moves away from it
(Previous/Next, another thumbnail, paging, another folder) and only then; the shown caption's tags as chips with
their counts in the folder; filtering the gallery by a tag (a chip or the filter box), which Previous/Next and the
paging then walk. Skipped without Debian's Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from ui_helpers import ARTIFACTS, NOISE_FILTERS, open_app

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]
BOX = "#cfg-train_data_dir input, #cfg-train_data_dir textarea"
COUNT = 30  # more than one gallery page (24)


def hair(i: int) -> str:
    return "blue hair" if i % 3 == 0 else "red hair"


def make_cats(root: Path, count: int = COUNT) -> Path:
    """``count`` small images img00..; every third one's caption has 'blue hair', the others 'red hair'."""
    folder = root / "5_cat"
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (64, 48), ((i * 8) % 256, 90, 160)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"cat, {hair(i)}, number {i}", encoding="utf-8")
    return root


def caption_of(root: Path, i: int) -> str:
    return (root / "5_cat" / f"img{i:02d}.txt").read_text(encoding="utf-8")


def load(page, url: str, dataset: Path, count: int = COUNT) -> None:
    from playwright.sync_api import expect

    open_app(page, url)
    page.locator(BOX).first.fill(str(dataset))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-message")).to_contain_text(f"{dataset.name}: {count} image(s)")
    expect(page.locator("#caption-file input")).not_to_have_value("")  # it opens on its first image


def test_an_edited_caption_is_saved_when_leaving_it_and_an_unchanged_one_is_not_written(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    dataset = make_cats(tmp_path / "cats")
    load(page, dry_app.url, dataset)
    name, caption, message = (page.locator("#caption-file input"), page.locator("#caption-text textarea"),
                              page.locator("#caption-message"))
    # A loaded folder opens on its first image: its caption is there to edit without a click.
    expect(name).to_have_value("5_cat/img00.png")
    expect(caption).to_have_value("cat, blue hair, number 0")
    expect(page.locator("#dataset-preview img")).to_be_visible()

    # Next: the edit of img00 is written, the editor shows img01.
    page.locator("#dataset-gallery img").nth(0).click()
    expect(caption).to_have_value("cat, blue hair, number 0")
    caption.fill("cat, blue hair, number 0, edited")
    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img01.png")
    expect(message).to_contain_text("Saved img00.txt")
    assert caption_of(dataset, 0) == "cat, blue hair, number 0, edited"

    # Unchanged, then Next and Previous: nothing written.
    untouched = dataset / "5_cat" / "img01.txt"
    before = untouched.stat().st_mtime_ns
    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img02.png")
    page.locator("#dataset-prev").click()
    expect(name).to_have_value("5_cat/img01.png")
    expect(message).not_to_contain_text("Saved")
    assert untouched.stat().st_mtime_ns == before

    # Previous, then another thumbnail.
    caption.fill("cat, red hair, one")
    page.locator("#dataset-prev").click()
    expect(name).to_have_value("5_cat/img00.png")
    expect(message).to_contain_text("Saved img01.txt")
    assert caption_of(dataset, 1) == "cat, red hair, one"
    caption.fill("cat, zero")
    page.locator("#dataset-gallery img").nth(5).click()
    expect(name).to_have_value("5_cat/img05.png")
    expect(message).to_contain_text("Saved img00.txt")
    assert caption_of(dataset, 0) == "cat, zero"

    # Paging: the editor keeps its image, the edit is written.
    caption.fill("cat, five")
    page.locator("#dataset-page-next").click()
    expect(page.locator("#dataset-page")).to_contain_text("Page 2 of 2")
    expect(message).to_contain_text("Saved img05.txt")
    assert caption_of(dataset, 5) == "cat, five"

    # Loading another folder.
    caption.fill("cat, five, last edit")
    other = make_cats(tmp_path / "others", 3)
    page.locator(BOX).first.fill(str(other))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-message")).to_contain_text("Saved img05.txt")
    expect(page.locator("#dataset-message")).to_contain_text("3 image(s)")
    assert caption_of(dataset, 5) == "cat, five, last edit"


def test_chips_show_tag_counts_and_a_click_filters_the_gallery_prev_next_stay_inside(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    dataset = make_cats(tmp_path / "cats")
    load(page, dry_app.url, dataset)
    name, position = page.locator("#caption-file input"), page.locator("#dataset-position")
    page.locator("#dataset-gallery img").nth(3).click()
    expect(name).to_have_value("5_cat/img03.png")
    chips = page.locator("#caption-chips button")
    expect(chips).to_have_text(["cat · 30", "blue hair · 10", "number 3 · 1"])

    chips.filter(has_text="blue hair").click()
    expect(page.locator("#dataset-filter-message")).to_contain_text("10 of 30 images have 'blue hair'")
    expect(page.locator("#dataset-gallery img")).to_have_count(10)
    expect(page.locator("#dataset-page")).to_contain_text("Page 1 of 1")
    expect(name).to_have_value("5_cat/img03.png")  # it has the tag: it stays
    expect(position).to_contain_text("Image 2 of 10")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tab-dataset-editor.png"), full_page=True)
    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img06.png")
    expect(position).to_contain_text("Image 3 of 10")
    for _ in range(8):
        page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img27.png")  # the last image with the tag, never a red-haired one
    expect(position).to_contain_text("Image 10 of 10")
    page.locator("#dataset-prev").click()
    expect(name).to_have_value("5_cat/img24.png")

    page.locator("#dataset-filter-clear").click()
    expect(page.locator("#dataset-filter-message")).to_have_text("")
    expect(page.locator("#dataset-page")).to_contain_text("Page 2 of 2")  # img24 is on page 2
    expect(position).to_contain_text(f"Image 25 of {COUNT}")
    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img25.png")


def test_the_filter_box_narrows_the_gallery_survives_a_save_and_a_new_folder_clears_it(page, dry_app, tmp_path):
    from playwright.sync_api import expect

    dataset = make_cats(tmp_path / "cats")
    load(page, dry_app.url, dataset)
    name, caption = page.locator("#caption-file input"), page.locator("#caption-text textarea")
    filter_message = page.locator("#dataset-filter-message")
    page.locator("#dataset-filter input").click()
    page.get_by_role("option", name="red hair · 20").click()
    expect(filter_message).to_contain_text("20 of 30 images have 'red hair'")
    expect(page.locator("#dataset-gallery img")).to_have_count(20)
    expect(name).to_have_value("5_cat/img01.png")  # img00 (shown on load) has blue hair: the first red-haired one
    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img02.png")
    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img04.png")  # img03 has blue hair

    # Saving a caption keeps the filter and recounts it.
    caption.fill("cat, blue hair, number 4")
    page.locator("#caption-save").click()
    expect(page.locator("#caption-message")).to_contain_text("Saved img04.txt")
    expect(filter_message).to_contain_text("19 of 30 images have 'red hair'")
    expect(page.locator("#dataset-gallery img")).to_have_count(19)
    page.locator("#dataset-next").click()
    expect(name).to_have_value("5_cat/img05.png")
    expect(page.locator("#dataset-position")).to_contain_text("Image 3 of 19")

    other = make_cats(tmp_path / "others", 3)
    page.locator(BOX).first.fill(str(other))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-message")).to_contain_text("3 image(s)")
    expect(filter_message).to_have_text("")
    expect(page.locator("#dataset-gallery img")).to_have_count(3)
    expect(page.locator("#dataset-filter input")).to_have_value(re.compile(r"^$"))


def test_a_bulk_tool_keeps_an_unsaved_edit_and_a_caption_that_cannot_be_saved_keeps_the_editor(page, dry_app,
                                                                                             tmp_path):
    from playwright.sync_api import expect

    dataset = make_cats(tmp_path / "cats", 3)
    (dataset / "5_cat" / "img02.txt").write_bytes(b"\xff\xfe not utf-8")
    load(page, dry_app.url, dataset, 3)
    name, caption, message = (page.locator("#caption-file input"), page.locator("#caption-text textarea"),
                              page.locator("#caption-message"))
    page.locator("#dataset-gallery img").nth(0).click()
    expect(caption).to_have_value("cat, blue hair, number 0")
    caption.fill("cat, edited first")
    page.locator("#bulk-trigger input").fill("sks")
    page.locator("#bulk-add").click()
    expect(page.locator("#bulk-message")).to_contain_text("Added 'sks' to 2 of 3 caption(s)")
    expect(caption).to_have_value("sks, cat, edited first")  # the edit was saved, then the tool ran on it
    assert caption_of(dataset, 0) == "sks, cat, edited first"
    expect(page.locator("#caption-chips button").first).to_have_text("sks · 2")

    # img02's caption file is not UTF-8: an edit of it cannot be saved, so Previous keeps the editor (and the edit).
    page.locator("#dataset-gallery img").nth(2).click()
    expect(message).to_contain_text("Cannot edit: caption img02.txt is not UTF-8")
    caption.fill("cat, typed anyway")
    page.locator("#dataset-prev").click()
    expect(message).to_contain_text("Not saved: caption img02.txt is not UTF-8")
    expect(name).to_have_value("5_cat/img02.png")
    expect(caption).to_have_value("cat, typed anyway")
    assert (dataset / "5_cat" / "img02.txt").read_bytes() == b"\xff\xfe not utf-8"
    caption.fill("")  # the edit undone: the editor moves on
    page.locator("#dataset-prev").click()
    expect(name).to_have_value("5_cat/img01.png")
