"""Which Train-tab buttons may be pressed (item 3), decided from the shown run, the queue and the form."""

from __future__ import annotations

from pathlib import Path

from app.runs import RunState
from app.supervisor import RunSnapshot
from app.tabs.train_view import control_states


def shown(status: str, state_path: str | None = None) -> RunSnapshot:
    return RunSnapshot(Path("/runs/x/1"), status, [], False, RunState(state_path=state_path))


def enabled(states: dict[str, bool]) -> set[str]:
    return {name for name, on in states.items() if on}


def test_idle_with_a_valid_form_only_start():
    assert enabled(control_states(shown("idle"), busy=False, form_ok=True)) == {"start"}
    assert enabled(control_states(shown("done"), busy=False, form_ok=True)) == {"start"}


def test_a_running_run_turns_start_into_queue_another_and_enables_its_controls():
    assert enabled(control_states(shown("running"), busy=True, form_ok=True)) == {"queue", "stop", "sample", "save"}
    assert enabled(control_states(shown("starting"), busy=True, form_ok=True)) == {"queue", "stop", "sample", "save"}


def test_resume_only_for_a_stopped_run_with_a_state():
    assert "resume" in enabled(control_states(shown("stopped", "/runs/x/1/x-step5-state"), busy=False, form_ok=True))
    assert "resume" not in enabled(control_states(shown("stopped"), busy=False, form_ok=True))
    assert "resume" not in enabled(control_states(shown("failed", "/s"), busy=False, form_ok=True))


def test_form_errors_disable_start_queue_and_resume_but_not_the_running_runs_controls():
    assert enabled(control_states(shown("idle"), busy=False, form_ok=False)) == set()
    assert enabled(control_states(shown("running"), busy=True, form_ok=False)) == {"stop", "sample", "save"}
    assert enabled(control_states(shown("stopped", "/s"), busy=False, form_ok=False)) == set()


def test_a_shown_queued_run_cannot_be_stopped_from_the_main_buttons():
    """A queued job is cancelled from its row in the queue view; the main Stop acts only on a running run."""
    assert enabled(control_states(shown("queued"), busy=True, form_ok=True)) == {"queue"}
