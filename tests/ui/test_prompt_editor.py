"""The sample-prompt editor in a real browser: the table follows the sample_prompts field, and editing a row
rewrites the field in kohya's syntax."""

from __future__ import annotations

import pytest
from ui_helpers import NOISE_FILTERS, fill, open_app

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]

FIELD = "#cfg-sample_prompts input"
TYPED = "a red circle --w 64 --h 64 --s 6; a blue square --n green"


def cell(page, row: int, column: int):
    return page.locator(f'#prompt-table [data-testid="cell-{row}-{column}"]')


def edit_cell(page, row: int, column: int, text: str) -> None:
    """Like a user: double-click the cell, type the new value, press Enter."""
    target = cell(page, row, column)
    target.dblclick()
    editor = target.locator("textarea, input").first
    editor.fill(text)
    editor.press("Enter")


def test_editing_a_row_rewrites_the_sample_prompts_field(page, dry_app):
    from playwright.sync_api import expect

    open_app(page, dry_app.url)
    page.get_by_role("tab", name="Model & preset").click()
    page.locator("#section-sample").get_by_text("Sample", exact=True).first.click()
    fill(page, FIELD, TYPED)
    page.locator("#prompt-editor").get_by_text("Sample prompt editor").click()
    for (row, column), text in {(0, 0): "a red circle", (0, 2): "64", (0, 4): "6", (1, 0): "a blue square",
                                (1, 1): "green"}.items():
        expect(cell(page, row, column)).to_have_text(text)  # the table follows the field

    edit_cell(page, 1, 6, "42")
    expect(page.locator(FIELD)).to_have_value(f"{TYPED} --d 42")
    edit_cell(page, 0, 5, "5.5")
    both = "a red circle --w 64 --h 64 --s 6 --l 5.5; a blue square --n green --d 42"
    expect(page.locator(FIELD)).to_have_value(both)

    edit_cell(page, 0, 2, "wide")  # not a number: the field keeps its value and the message names the cell
    expect(page.locator("#prompt-editor-message")).to_contain_text("row 1, Width: 'wide' is not a whole number")
    expect(page.locator(FIELD)).to_have_value(both)
