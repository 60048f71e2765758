"""The page in a real browser: pick a preset, start a dry run, watch it finish with a chart and samples.

Drives Debian's Chromium (no Playwright browser download, architecture §5.6); skipped where it is not installed.
Screenshots of every tab land in test-artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ui_helpers import NOISE_FILTERS

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def fill(page, selector: str, text: str) -> None:
    """Fill an input and make sure the value sticks: a freshly opened accordion mounts its fields a moment after
    they become visible, and a fill landing before that is lost."""
    field = page.locator(selector)
    for _ in range(20):
        field.fill(text)
        field.blur()
        page.wait_for_timeout(250)
        if field.input_value() == text:
            return
    raise AssertionError(f"{selector} did not keep {text!r}")


def test_preset_dry_run_end_to_end(page, dry_app):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(dry_app.url)
    expect(page.get_by_role("tab", name="Train")).to_be_visible()

    open_tab(page, "Model & preset")
    page.locator("#preset input").click()
    page.get_by_role("option", name="SD1.5 anime").click()
    expect(page.locator("#cfg-clip_skip input")).to_have_value("2")
    expect(page.locator("#preset-info")).to_contain_text("booru")

    # Samples need prompts and a schedule; the anime preset leaves both to the user.
    page.locator("#section-sample").get_by_text("Sample", exact=True).first.click()
    fill(page, "#cfg-sample_prompts input", "1girl, solo")
    fill(page, "#cfg-sample_every_n_epochs input", "5")
    page.screenshot(path=str(ARTIFACTS / "tab-model.png"), full_page=True)

    open_tab(page, "Train")
    fill(page, "#cfg-output_name input", "anime-e2e")
    page.locator("#start-btn").click()
    expect(page.locator("#start-message")).to_contain_text("started")
    expect(page.locator("#run-status")).to_contain_text("done", timeout=90_000)
    expect(page.locator("#run-progress")).to_contain_text("step 100/100")
    expect(page.locator("#loss-chart")).to_be_visible()
    expect(page.locator("#loss-chart img, #loss-chart svg").first).to_be_visible()
    expect(page.locator("#samples img").first).to_be_visible()
    expect(page.locator("#log-tail textarea")).to_have_value(re.compile("dry run done"))
    page.screenshot(path=str(ARTIFACTS / "tab-train.png"), full_page=True)

    open_tab(page, "Results")
    page.locator("#results-refresh").click()
    page.locator("#results-run input").click()
    page.get_by_role("option", name=re.compile("anime-e2e")).first.click()
    expect(page.locator("#results-report")).to_contain_text("dry run")  # a dry run's files are placeholders


def test_reload_reattaches_to_the_finished_run(page, dry_app):
    from playwright.sync_api import expect

    page.goto(dry_app.url)
    open_tab(page, "Train")
    expect(page.locator("#run-status")).to_contain_text("done")
    expect(page.locator("#samples img").first).to_be_visible()
