"""The Train tab's live readings on the event stream of a real (dry) run: guidance stays quiet until the curve can
support advice, and the ETA appears only once it has been measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from timing import scaled

from app.guidance import MIN_POINTS, diagnose
from app.runs import ETA_MIN_STEPS, RunState
from app.supervisor import RunSnapshot
from app.tabs.train import progress_text
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.events import Step, Val, read_events
from training.run.dry_run import STEP_SECONDS_ENV

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 40
BAND_BELOW_THE_CURVE = (0.02, 0.05)  # the dry run's loss sits near 0.1: a band reading would say "raise the LR"


@pytest.fixture(scope="module")
def dry_run_events(tmp_path_factory) -> list:
    """The events of a real 40-step dry run (the trainer's own process, its own timings)."""
    folder = tmp_path_factory.mktemp("live")
    job = folder / "job.toml"
    save_config(TrainConfig(output_dir=str(folder / "run"), output_name="live", max_train_steps=TOTAL,
                            validation_every_n_steps=4), job)
    env = dict(os.environ, **{STEP_SECONDS_ENV: "0.02", "PYTHONPATH": str(ROOT)})
    subprocess.run([sys.executable, "-m", "training", "--config", str(job), "--dry-run"], check=True, env=env,
                   cwd=ROOT, capture_output=True, timeout=scaled(60))
    return read_events(folder / "run")


def curve_up_to(events: list, step: int) -> tuple[list[Step], list[Val]]:
    return ([e for e in events if isinstance(e, Step) and e.step <= step],
            [e for e in events if isinstance(e, Val) and e.step <= step])


def test_no_advice_before_the_curve_can_support_it(dry_run_events):
    for step in range(1, TOTAL + 1):
        d = diagnose(*curve_up_to(dry_run_events, step), BAND_BELOW_THE_CURVE, TOTAL)
        if step < MIN_POINTS:
            left = MIN_POINTS - step
            assert d.state == "waiting", (step, d)
            assert d.headline == f"Too early to judge: {left} more step{'' if left == 1 else 's'}."
            assert "learning rate" not in d.advice and "learning rate" not in d.headline
        else:
            assert d.state != "waiting", (step, d)


def test_too_early_counts_the_share_of_a_long_run():
    steps = [{"event": "step", "step": s, "loss": 0.1, "smoothed": 0.1} for s in range(1, 51)]
    d = diagnose(steps, [], None, 1000)  # 50 points, but only 5% of the run
    assert d.state == "waiting" and d.headline == "Too early to judge: 150 more steps."


def test_eta_shows_only_once_measured_and_never_zero(dry_run_events):
    state, shown = RunState(), []
    for event in dry_run_events:
        state.apply(event)
        if isinstance(event, Step):
            text = progress_text(RunSnapshot(Path("run"), "running", [], False, state))
            shown.append((event.step, text))
    assert all("ETA" not in text for step, text in shown if step < ETA_MIN_STEPS), shown[:ETA_MIN_STEPS]
    assert all("0m 00s" not in text for _, text in shown), shown
    assert any("ETA" in text for _, text in shown)  # measured later in the run
