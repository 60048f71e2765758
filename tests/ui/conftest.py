"""The UI under test: the real app on a temporary data dir, served in-process; runs use the trainer's dry run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # ui_helpers, whatever the import mode

from ui_helpers import STEP_SECONDS, UiApp, serve, stop_all


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
    for item in items:
        if "e2e" in item.keywords and not Path("/usr/bin/chromium").exists():
            item.add_marker(skip)


@pytest.fixture(scope="module")
def dry_app(tmp_path_factory) -> Iterator[UiApp]:
    previous = os.environ.get("LORAFORGE_DRY_RUN_STEP_SECONDS")
    os.environ["LORAFORGE_DRY_RUN_STEP_SECONDS"] = STEP_SECONDS  # children inherit it at spawn
    ui, demo = serve(tmp_path_factory.mktemp("ui-data"), dry_run=True)
    try:
        yield ui
    finally:
        stop_all(ui.supervisor)
        demo.close()
        if previous is None:
            os.environ.pop("LORAFORGE_DRY_RUN_STEP_SECONDS", None)
        else:
            os.environ["LORAFORGE_DRY_RUN_STEP_SECONDS"] = previous
