"""The chart's memory of a run: a resumed run's curve starts at step 1, with the points of the runs before it."""

from __future__ import annotations

from pathlib import Path

from app.runs import RunState
from app.supervisor import RunSnapshot
from app.tabs.context import RunHistory
from training.contract.events import EventWriter, read_events


def write_run(run_dir: Path, steps: range, resumed_from: Path | None = None, start_step: int = 0) -> Path:
    events = EventWriter(run_dir)
    events.emit("start", resumed_from=str(resumed_from) if resumed_from else None, start_step=start_step)
    for step in steps:
        events.emit("step", step=step, loss=1.0 / step)
        if step % 2 == 0:
            events.emit("val", step=step, loss=0.5)
    events.emit("stopped", step=steps[-1])
    events.close()
    return run_dir


def fed(history: RunHistory, run_dir: Path):
    return history.feed(RunSnapshot(run_dir, "stopped", read_events(run_dir), True, RunState()))


def test_a_resumed_run_shows_the_curve_from_step_one(tmp_path):
    first = write_run(tmp_path / "a", range(1, 8))  # stopped at 7, but its state was saved at 5
    second = write_run(tmp_path / "b", range(6, 11), resumed_from=first / "lora-step00000005-state", start_step=5)
    third = write_run(tmp_path / "c", range(11, 13), resumed_from=second / "lora-step00000010-state", start_step=10)
    record = fed(RunHistory(), third)
    assert [e["step"] for e in record.steps] == list(range(1, 13))
    assert [e["step"] for e in record.vals] == [2, 4, 6, 8, 10, 12]


def test_a_state_from_elsewhere_draws_only_this_run(tmp_path):
    run = write_run(tmp_path / "b", range(6, 9), resumed_from=tmp_path / "gone" / "x-state", start_step=5)
    assert [e["step"] for e in fed(RunHistory(), run).steps] == [6, 7, 8]
