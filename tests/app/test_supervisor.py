"""JobSupervisor with real child processes (the torch-free dry-run trainer): start, watch, queue, stop, crash and
re-attach after a UI restart, all through the run folder as the UI will use it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from timing import scaled

from app.runs import UNEXPECTED_END, terminate_group
from app.supervisor import JobSupervisor, RunSnapshot
from training.contract.config import TrainConfig
from training.contract.processes import pid_alive
from training.run.dry_run import STEP_SECONDS_ENV

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX process groups and signals")


@pytest.fixture(autouse=True)
def quick_steps(monkeypatch):
    monkeypatch.setenv(STEP_SECONDS_ENV, "0.01")


@pytest.fixture
def make_supervisor(tmp_path):
    """Supervisors on one data dir; any child still alive at the end is killed with its group."""
    made: list[JobSupervisor] = []

    def make() -> JobSupervisor:
        sup = JobSupervisor(tmp_path / "data", dry_run=True)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        for tracked in sup._tracked.values():
            if tracked.popen and tracked.popen.poll() is None:
                tracked.popen.kill()
                tracked.popen.wait()


def job(steps: int, name: str = "demo", **options) -> TrainConfig:
    return TrainConfig(output_name=name, max_train_steps=steps, validation_every_n_steps=0, **options)


def poll_until(sup: JobSupervisor, run_dir: Path, done: Callable[[RunSnapshot], bool], timeout: float = 8,
               events: list | None = None) -> RunSnapshot:
    """Poll like the UI's timer, collecting the new events of every poll into ``events``."""
    deadline = time.monotonic() + timeout
    while True:
        snap = sup.poll(run_dir)
        if events is not None:
            events.extend(snap.events)
        if done(snap):
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last status {snap.status}: {snap.status_text}")
        time.sleep(0.05)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_start_runs_to_done_and_poll_returns_only_new_events(make_supervisor, monkeypatch):
    monkeypatch.setenv(STEP_SECONDS_ENV, "0.03")  # slow enough to see it running between polls
    sup = make_supervisor()
    handle = sup.start(job(40, sample_prompts="a cat", sample_every_n_steps=20))
    assert handle.status == "starting" and handle.pid
    assert handle.run_dir.parent == sup.data_dir / "runs" / "demo" and (handle.run_dir / "job.toml").is_file()
    events: list[dict] = []
    first = poll_until(sup, handle.run_dir, lambda s: s.status == "running" and s.step > 0, events=events)
    assert first.running and first.total_steps == 40
    later = poll_until(sup, handle.run_dir, lambda s: s.step > first.step, events=events)
    assert later.step > first.step
    final = poll_until(sup, handle.run_dir, lambda s: s.status == "done", events=events)
    assert not final.running and final.step == 40 and final.error is None
    assert final.final_path == str(handle.run_dir / "demo.safetensors") and Path(final.final_path).is_file()
    assert len(final.sample_paths) == 2 and all(Path(p).is_file() for p in final.sample_paths)
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == list(range(1, 41))  # every step exactly once across all polls
    assert [e["event"] for e in events].count("start") == 1
    again = sup.poll(handle.run_dir)
    assert again.events == [] and not again.changed and again.status == "done"
    assert "done" in again.status_text
    assert "trainer.log" in {p.name for p in handle.run_dir.iterdir()}


@posix_only
def test_stop_finishes_as_stopped_and_the_process_group_is_gone(make_supervisor):
    sup = make_supervisor()
    handle = sup.start(job(5000, sample_prompts="a cat"))
    poll_until(sup, handle.run_dir, lambda s: s.status == "running" and s.step > 2)
    assert sup.request(handle.run_dir, "sample")
    poll_until(sup, handle.run_dir, lambda s: len(s.sample_paths) == 1)
    assert sup.stop(handle.run_dir, grace_s=20) == "stopping"
    snap = poll_until(sup, handle.run_dir, lambda s: s.status == "stopped")
    assert not snap.running and Path(snap.last_checkpoint).is_file()
    deadline = time.monotonic() + 5
    while not group_gone(handle.pid) and time.monotonic() < deadline:
        sup.poll(handle.run_dir)  # reaps the child
        time.sleep(0.05)
    assert group_gone(handle.pid)
    assert sup.stop(handle.run_dir) == "not running" and not sup.request(handle.run_dir, "save")


def test_second_start_queues_and_starts_when_the_first_ends(make_supervisor):
    sup = make_supervisor()
    first = sup.start(job(30, name="first"))
    second = sup.start(job(5, name="second"))
    third = sup.start(job(5, name="third"))
    assert (second.status, second.position) == ("queued", 1) and (third.status, third.position) == ("queued", 2)
    assert (second.run_dir / "job.toml").is_file() and (second.run_dir / "queued").is_file()
    assert sup.poll(second.run_dir).status == "queued" and sup.poll(second.run_dir).queue_position == 1
    assert sup.stop(third.run_dir) == "cancelled"
    assert not (third.run_dir / "queued").exists() and sup.poll(third.run_dir).status == "cancelled"
    poll_until(sup, first.run_dir, lambda s: s.status == "done")
    assert poll_until(sup, second.run_dir, lambda s: s.status != "queued").status in ("starting", "running", "done")
    assert poll_until(sup, second.run_dir, lambda s: s.status == "done").step == 5
    time.sleep(0.3)
    assert sup.poll(third.run_dir).status == "cancelled" and not (third.run_dir / "events.jsonl").exists()


@posix_only
def test_a_killed_trainer_is_failed_with_the_log_tail(make_supervisor):
    sup = make_supervisor()
    handle = sup.start(job(5000))
    poll_until(sup, handle.run_dir, lambda s: s.status == "running")
    os.killpg(handle.pid, signal.SIGKILL)
    snap = poll_until(sup, handle.run_dir, lambda s: s.status == "failed")
    assert not snap.running
    assert snap.error.startswith(UNEXPECTED_END) and "trainer.log" in snap.error
    assert "ended by signal SIGKILL" in snap.error  # how it ended, not only that it did
    assert "-m training --config" in snap.error and "--dry-run" in snap.error  # from the log's tail
    assert "failed" in snap.status_text


def test_a_new_supervisor_reattaches_to_a_running_run_and_lists_finished_ones(make_supervisor):
    old = make_supervisor()
    finished = old.start(job(3, name="early"))
    poll_until(old, finished.run_dir, lambda s: s.status == "done")
    running = old.start(job(5000, name="long"))
    poll_until(old, running.run_dir, lambda s: s.status == "running")

    new = make_supervisor()  # the UI restarted: nothing in memory, only the data dir
    summaries = new.discover()
    assert summaries[0].run_dir == running.run_dir  # newest first
    runs = {r.run_dir: r for r in summaries}
    assert runs[running.run_dir].status == "running" and runs[running.run_dir].running
    assert runs[finished.run_dir].status == "done" and runs[finished.run_dir].final_path
    snap = new.poll()  # no run given: the re-attached active one, with its events from the beginning
    assert snap.run_dir == running.run_dir and snap.status == "running"
    assert snap.events[0]["event"] == "status" and any(e["event"] == "start" for e in snap.events)
    queued = new.start(job(2, name="after"))
    assert queued.status == "queued"  # the re-attached run counts as active
    assert new.stop(running.run_dir, grace_s=20) == "stopping"
    assert poll_until(new, running.run_dir, lambda s: s.status == "stopped").step > 0
    old.poll(running.run_dir)  # the old supervisor reaps its child; the new one saw it end by pid
    assert poll_until(new, queued.run_dir, lambda s: s.status == "done").step == 2


def test_a_run_that_cannot_even_validate_fails_with_its_error_line(make_supervisor, tmp_path):
    sup = make_supervisor()
    handle = sup.start(job(3, sample_every_n_steps=1))  # no sample_prompts: the trainer exits 2
    snap = poll_until(sup, handle.run_dir, lambda s: s.status == "failed")
    assert snap.error.startswith("sample_every_n_steps/epochs is set but sample_prompts is empty")


@posix_only
def test_terminate_group_kills_a_child_that_ignores_sigterm_and_its_grandchildren():
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(g.pid, flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(proc.stdout.readline())
        started = time.monotonic()
        terminate_group(proc.pid, lambda: proc.poll() is None, kill_after_s=0.5)
        assert proc.wait(timeout=scaled(5)) == -signal.SIGKILL and time.monotonic() - started < scaled(5)
        deadline = time.monotonic() + 5
        while pid_alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(grandchild)  # same group: killed with its parent
    finally:
        proc.kill()
        proc.wait()


@posix_only
def test_stop_right_after_start_survives_the_trainer_clearing_control(make_supervisor):
    sup = make_supervisor()
    handle = sup.start(job(5000))
    assert sup.poll(handle.run_dir).status == "starting"  # the trainer clears control/ once it is up
    assert sup.stop(handle.run_dir, grace_s=20) == "stopping"
    assert poll_until(sup, handle.run_dir, lambda s: s.status == "stopped").step < 5000


@posix_only
def test_after_the_grace_the_group_is_terminated(make_supervisor, monkeypatch):
    monkeypatch.setenv(STEP_SECONDS_ENV, "30")  # a step that outlasts the grace: the stop flag is never seen
    sup = make_supervisor()
    handle = sup.start(job(5))
    poll_until(sup, handle.run_dir, lambda s: s.status == "running")
    assert sup.stop(handle.run_dir, grace_s=0.3) == "stopping"
    snap = poll_until(sup, handle.run_dir, lambda s: s.status == "failed")
    assert snap.error.startswith("stopped by force") and snap.step == 0
    assert group_gone(handle.pid)


def test_a_refused_input_shows_the_trainers_one_line_reason(tmp_path):
    from app.runs import LOG_FILE, failure_message

    (tmp_path / LOG_FILE).write_text("$ python -m training --config job.toml\n"
                                     "error: train_data_dir: folder /x/data does not exist\n", encoding="utf-8")
    assert failure_message(tmp_path, 2) == "train_data_dir: folder /x/data does not exist"
    assert failure_message(tmp_path, 1).startswith("the trainer process ended unexpectedly (exit status 1)")


@posix_only
def test_start_right_after_a_run_ended_starts_instead_of_queueing(tmp_path):
    """A trainer writes its last event, then takes a moment to exit. A Start (or Resume) in that moment must not
    queue behind a run that is already over."""
    fake = tmp_path / "slow-exit-trainer"
    fake.write_text('#!/bin/sh\n'  # called as: <python> -m training --config <run>/job.toml
                    'printf \'{"event":"start"}\\n{"event":"stopped","step":3}\\n\' > "$(dirname "$4")/events.jsonl"\n'
                    'sleep 1.5\n')
    fake.chmod(0o755)
    sup = JobSupervisor(tmp_path / "data", python=str(fake))
    first = sup.start(job(10, name="first"))
    poll_until(sup, first.run_dir, lambda s: s.status == "stopped")
    second = sup.start(job(10, name="second"))
    assert second.status == "starting", second
    poll_until(sup, second.run_dir, lambda s: s.status == "stopped")


# --- the queue runs unattended, survives a restart as a list the user confirms, and closing the UI stops runs


def wait_files(predicate: Callable[[], object], timeout: float = 30) -> object:
    """Wait on the run folder's files only: nothing here polls the supervisor, so only its own thread acts."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout} s")


def test_the_queue_advances_with_no_page_polling(make_supervisor):
    from app.runs import replay

    sup = make_supervisor()
    sup.run_queue(every_s=0.1)
    try:
        first = sup.start(job(20, name="first"))
        second = sup.start(job(5, name="second"))
        assert second.status == "queued"
        assert wait_files(lambda: replay(second.run_dir).terminal == "done")  # nobody called poll()
        assert replay(first.run_dir).terminal == "done"
    finally:
        sup.close()
    assert sup._queue_thread is None


def test_jobs_queued_before_a_restart_wait_until_the_user_starts_the_queue(make_supervisor):
    from app.runs import HELD_TEXT

    old = make_supervisor()
    running = old.start(job(5000, name="long"))
    queued = [old.start(job(3, name=f"after-{n}")) for n in (1, 2)]
    assert old.stop(running.run_dir, grace_s=20) == "stopping"
    wait_files(lambda: not pid_alive(running.pid))

    new = make_supervisor()  # the UI restarted with two jobs in the queue and nothing running
    snap = new.poll(queued[0].run_dir)  # a poll would start the next job if it were not held
    assert snap.status == "queued" and snap.held and snap.status_text == HELD_TEXT
    assert new.held() == sorted(q.run_dir for q in queued) and not new.busy()
    rows = new.overview()
    assert [r.run_dir for r in rows[:2]] == [q.run_dir for q in queued] and all(r.held for r in rows[:2])
    assert new.stop(queued[1].run_dir) == "cancelled" and new.held() == [queued[0].run_dir]
    assert new.release_held() == 1
    assert poll_until(new, queued[0].run_dir, lambda s: s.status == "done").step == 3
    assert new.poll(queued[1].run_dir).status == "cancelled"


def test_overview_lists_queued_running_and_finished_runs_each_with_its_own_folder(make_supervisor):
    sup = make_supervisor()
    done = sup.start(job(3, name="done-one"))
    poll_until(sup, done.run_dir, lambda s: s.status == "done")
    running = sup.start(job(5000, name="busy"))
    poll_until(sup, running.run_dir, lambda s: s.status == "running")
    later = [sup.start(job(3, name=f"later-{n}")) for n in (1, 2)]
    rows = {r.run_dir: r for r in sup.overview()}
    assert [(rows[q.run_dir].status, rows[q.run_dir].position) for q in later] == [("queued", 1), ("queued", 2)]
    assert rows[later[1].run_dir].text == "queued (position 2)" and rows[running.run_dir].status == "running"
    assert rows[done.run_dir].status == "done" and not rows[done.run_dir].resumable
    assert [r.run_dir for r in sup.overview()][:3] == [later[0].run_dir, later[1].run_dir, running.run_dir]
    assert sup.stop(later[0].run_dir) == "cancelled"  # the named job only: the running run goes on
    assert sup.poll(running.run_dir).status == "running"
    assert sup.stop(running.run_dir, grace_s=20) == "stopping"
    stopped = poll_until(sup, running.run_dir, lambda s: s.status == "stopped")
    assert {r.run_dir: r for r in sup.overview()}[running.run_dir].resumable and stopped.state.state_path
    sup.stop(later[1].run_dir)


@posix_only
def test_closing_the_ui_stops_the_running_run_and_says_how_it_ended(make_supervisor):
    sup = make_supervisor()
    handle = sup.start(job(5000, name="closing"))
    waiting = sup.start(job(3, name="waiting"))
    poll_until(sup, handle.run_dir, lambda s: s.status == "running" and s.step > 2)
    said: list[str] = []
    sup.close("SIGTERM", grace_s=20, echo=said.append)
    assert not pid_alive(handle.pid)
    snap = make_supervisor().poll(handle.run_dir)  # as the next start of the UI reads it
    assert snap.status == "stopped"
    assert snap.status_text == f"stopped: LoraForge was closed (SIGTERM); the LoRA and state were saved at step " \
                               f"{snap.step}"
    assert any(line.endswith(snap.status_text) for line in said), said
    assert any("1 queued run stay" in line for line in said), said
    assert (waiting.run_dir / "queued").is_file()  # left for the user to confirm at the next start
