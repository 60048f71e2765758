"""A run folder written by an earlier version (0.1.0, before events were typed and carried the self-check's
numbers) still opens: the Results tab lists its saves with their step and epochs from the events, the Train tab
shows it done with its curve and samples. The folder in tests/ui/data/run-0.1.0 is what that version wrote for a
real 9-step run on the tiny model (3 epochs, a save per epoch, validation every 2 steps, one epoch-2 sample),
with its absolute paths replaced by placeholders; the per-epoch LoRA files are copies of its final one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gradio_client import Client
from ui_helpers import NOISE_FILTERS, serve, show, stop_all

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]

FIXTURE = Path(__file__).parent / "data" / "run-0.1.0"
RUN = "old/20261201-120000"


def install_old_run(data_dir: Path) -> Path:
    """The fixture as it lay on the disk of the user who made it, under this data folder."""
    run_dir = data_dir / "runs" / RUN
    shutil.copytree(FIXTURE, run_dir)
    for name in ("events.jsonl", "job.toml"):
        path = run_dir / name
        text = path.read_text(encoding="utf-8").replace("{RUN}", str(run_dir))
        path.write_text(text.replace("{MODEL}", str(data_dir / "model")).replace("{DATA}", str(data_dir / "data")),
                        encoding="utf-8")
    for epoch in (1, 2):
        shutil.copyfile(run_dir / "old.safetensors", run_dir / f"old-{epoch:06d}.safetensors")
    return run_dir


@pytest.fixture(scope="module")
def old_run_app(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("old-run-data")
    run_dir = install_old_run(data_dir)
    ui, demo = serve(data_dir, dry_run=True)
    try:
        yield Client(ui.url, verbose=False), run_dir
    finally:
        stop_all(ui.supervisor)
        demo.close()


def test_results_lists_the_old_saves_with_step_and_epochs_from_their_events(old_run_app):
    client, _ = old_run_app
    run, table, save, _download, report, _prompt, _folder = client.predict(api_name="/results_runs")
    assert run["value"] == RUN and run["choices"][0][0] == "old · 20261201-120000 · done · 3 saves"
    rows = {row[0]: row[:4] for row in table["data"]}
    assert rows == {"old.safetensors": ["old.safetensors", "final", 9, 3],
                    "old-000002.safetensors": ["old-000002.safetensors", "epoch 2", 6, 2],
                    "old-000001.safetensors": ["old-000001.safetensors", "epoch 1", 3, 1]}
    assert all(row[5] == "60 of 60 modules matched" for row in table["data"])  # the old events' wording
    assert save["value"] == "old.safetensors"
    assert "Self-check: 60 of 60 modules matched ✓" in report and "| Rank | 4 |" in report


def test_results_report_of_an_old_epoch_save(old_run_app):
    client, _ = old_run_app
    _download, report = client.predict(RUN, "old-000001.safetensors", api_name="/results_report")
    assert "epoch 1 (step 3, 1 epoch done)" in report and "60 of 60 modules matched" in report


def test_train_tab_shows_the_old_run_done_with_its_curve_and_samples(old_run_app):
    client, run_dir = old_run_app
    view = show(client, str(run_dir))
    assert view["status"].startswith("**done**"), view["status"]
    assert view["progress"].startswith("step 9/9")
    assert view["chart"] is not None
    assert [item["caption"] for item in view["samples"]] == ["step 6 (epoch 2): a robot"]
