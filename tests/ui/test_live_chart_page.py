"""The Train tab in a real browser on a run that failed early: the page shows the failure, not "waiting" advice."""

from __future__ import annotations

import re

import pytest
from ui_helpers import NOISE_FILTERS, open_app

from training.contract.events import EventWriter

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]

REASON = "CUDA out of memory. Tried to allocate 2.00 GiB"


def failed_run(data_dir):
    """A run folder as the trainer leaves it when it fails at step 6 of 40."""
    run_dir = data_dir / "runs" / "oom" / "20240101-120000"
    run_dir.mkdir(parents=True)
    events = EventWriter(run_dir)
    events.emit("start", run_id=run_dir.name, pid=1, total_steps=40, total_epochs=1)
    for step in range(1, 6):
        events.emit("step", step=step, epoch=1, loss=0.2 - step * 0.01, smoothed=0.2 - step * 0.01, eta=0.0)
    events.emit("error", msg=REASON)
    events.close()
    return run_dir


def test_a_failed_run_shows_its_failure_instead_of_waiting(page, dry_app):
    from playwright.sync_api import expect

    failed_run(dry_app.settings.data_dir)
    open_app(page, dry_app.url)
    page.get_by_role("tab", name="Train").click()
    page.locator("#run-picker input").click()
    page.get_by_role("option", name=re.compile(r"^oom · ")).first.click()
    expect(page.locator("#run-status")).to_contain_text("failed")
    guidance = page.locator("#guidance")
    expect(guidance).to_contain_text(f"The run failed: {REASON}")
    expect(guidance).not_to_contain_text("Waiting")
    expect(guidance).not_to_contain_text("Too early")
    expect(page.locator("#loss-chart img, #loss-chart svg").first).to_be_visible()
    assert "ETA" not in page.locator("#run-progress").inner_text()
