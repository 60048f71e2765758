"""A save's step and epoch read the same on the Train and Results tabs, on the demo's real training run."""

from __future__ import annotations

import re

import pytest
from gradio_client import Client
from ui_helpers import NOISE_FILTERS, run_of

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]


@pytest.mark.slow
def test_the_final_save_has_the_same_step_and_epochs_on_both_tabs(trained_demo):
    train_tab = re.search(r"last save: step (\d+), (\d+) epochs? done", trained_demo.final["progress"])
    assert train_tab, trained_demo.final["progress"]
    run_dir = run_of(trained_demo.message)
    value = f"{run_dir.parent.name}/{run_dir.name}"
    client = Client(trained_demo.app.url, verbose=False)
    _, table, save, _, report, *_ = client.predict(value, api_name="/results_runs")
    final = next(row for row in table["data"] if row[1] == "final")
    assert final[0] == save["value"] == "demo.safetensors"
    assert [final[2], final[3]] == [int(train_tab[1]), int(train_tab[2])]
    assert f"final ({train_tab[0].removeprefix('last save: ')})" in report
