"""The UI under test: the real app on a temporary data dir, served in-process; runs use the trainer's dry run."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # ui_helpers, whatever the import mode

from timing import ms
from ui_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STEP_SECONDS,
    UiApp,
    drawn_until_ended,
    run_of,
    serve,
    stop_all,
    wait_for,
)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
    for item in items:
        if "e2e" in item.keywords and not Path(CHROMIUM).exists():
            item.add_marker(skip)


@contextlib.contextmanager
def gradio_dir_of(ui: UiApp) -> Iterator[None]:
    """Gradio reads GRADIO_TEMP_DIR process-wide, where it writes each file it serves; each app sets it to its own
    data folder when built (one app per process in real use). Several apps share this test process, so while one is
    under test the variable points at that app's folder, else its files would land where it may not serve them."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(ui.settings.gradio_dir)
    try:
        yield
    finally:
        if previous is not None:
            os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(autouse=True)
def _gradio_dir_of_the_app_under_test(request) -> Iterator[None]:
    app_fixture = next((n for n in ("real_app", "dry_app") if n in request.fixturenames), None)
    if app_fixture is None:
        yield
        return
    with gradio_dir_of(request.getfixturevalue(app_fixture)):
        yield


@contextlib.contextmanager
def served(data_dir: Path, dry_run: bool) -> Iterator[UiApp]:
    """The app on data_dir until the block ends; then no trainer child is left running."""
    ui, demo = serve(data_dir, dry_run=dry_run)
    try:
        yield ui
    finally:
        stop_all(ui.supervisor)
        demo.close()


@pytest.fixture
def app(tmp_path) -> Iterator[UiApp]:
    """A dry-run app of its own for one test: for tests that change the saved form or the data folder."""
    with served(tmp_path / "data", dry_run=True) as ui:
        yield ui


@pytest.fixture(scope="module")
def dry_app(tmp_path_factory) -> Iterator[UiApp]:
    """Runs replay the trainer's dry run at a quick pace: no model, no dataset."""
    previous = os.environ.get("LORAFORGE_DRY_RUN_STEP_SECONDS")
    os.environ["LORAFORGE_DRY_RUN_STEP_SECONDS"] = STEP_SECONDS  # children inherit it at spawn
    try:
        with served(tmp_path_factory.mktemp("ui-data"), dry_run=True) as ui:
            yield ui
    finally:
        if previous is None:
            os.environ.pop("LORAFORGE_DRY_RUN_STEP_SECONDS", None)
        else:
            os.environ["LORAFORGE_DRY_RUN_STEP_SECONDS"] = previous


@pytest.fixture(scope="module")
def client(dry_app):
    """gradio_client on the dry-run app (a module may serve its own app and override this)."""
    from gradio_client import Client

    return Client(dry_app.url, verbose=False)


@pytest.fixture(scope="session")
def real_app(tmp_path_factory) -> Iterator[UiApp]:
    """Runs are real trainer processes (the tiny demo model trains on the CPU in seconds). One app for the session:
    the demo trains on it once (``trained_demo``) and the browser journey continues from that run."""
    with served(tmp_path_factory.mktemp("real-data"), dry_run=False) as ui:
        yield ui


@dataclass
class DemoOutcome:
    app: UiApp
    values: dict[str, Any]
    message: str
    final: dict[str, Any]
    seconds: float


@pytest.fixture(scope="session")
def trained_demo(real_app) -> DemoOutcome:
    """One press of Try the demo on the real app's empty data folder, watched until the run ends the way the page
    watches it (through /show_run), timed from the press like a new user would. The only demo that trains."""
    from gradio_client import Client

    from app.demo_setup import demo_values
    from training.contract.services import DEMO_CONFIG

    client = Client(real_app.url, verbose=False)
    seen: dict[str, Any] = {}
    started = time.monotonic()
    with gradio_dir_of(real_app):
        message = client.predict(api_name="/try_demo")[0]  # the demo runs with its own settings, not the form's
        values = demo_values(real_app.settings.demo_dir / DEMO_CONFIG)
        run_of(message)  # started, else there is nothing to wait for
        final = wait_for(lambda: drawn_until_ended(client, seen), timeout=240, every=1.0)
    seconds = time.monotonic() - started
    # Measured, not asserted: 25-45 s on a quiet 2-core CPU, several times that when other processes want the cores.
    print(f"Try the demo: press to done in {seconds:.1f} s")
    return DemoOutcome(real_app, values, message, final, seconds)


@pytest.fixture(scope="module")
def page():
    """A headless Debian Chromium page (no Playwright browser download)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(ms(30))
            yield page
        finally:
            browser.close()
