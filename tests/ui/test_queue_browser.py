"""The Train tab's Start/Stop buttons, queue view and Load settings in a real browser, on dry-run trainers."""

from __future__ import annotations

import re

import pytest
from timing import ms
from ui_helpers import NOISE_FILTERS, fill, open_app, wait_for

from app.runs import replay
from training.contract.processes import pid_alive

pytestmark = [pytest.mark.e2e, *(pytest.mark.filterwarnings(f) for f in NOISE_FILTERS)]


@pytest.fixture(autouse=True)
def patient_expect():
    """The page reacts through server round trips on a busy machine: give expect() the scaled page timeout."""
    from playwright.sync_api import expect

    expect.set_options(timeout=ms(20))
    yield
    expect.set_options(timeout=5000)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def field_value(page, name: str) -> str:
    return page.locator(f"#cfg-{name} input, #cfg-{name} textarea").first.input_value()


def row(page, run_dir):
    """The queue view's row of one run folder (its id followed by " · ": a run started in the same second is
    "<id>-2", so a bare prefix would match both)."""
    label = re.compile(re.escape(f"{run_dir.parent.name} · {run_dir.name} · "))
    return page.locator(".queue-row").filter(has_text=label).first


def new_runs(app, before: set) -> list:
    """Run folders made since ``before`` (a set of folders), oldest first."""
    return sorted((s.run_dir for s in app.supervisor.discover() if s.run_dir not in before), key=lambda p: p.name)


def all_runs(app) -> set:
    return {s.run_dir for s in app.supervisor.discover()}


def settle(app) -> None:
    """Nothing running or queued, every trainer process gone."""
    for summary in app.supervisor.discover():
        if summary.status in ("queued", "starting", "running"):
            app.supervisor.stop(summary.run_dir, grace_s=10)
    wait_for(lambda: not any(s.status in ("queued", "starting", "running") for s in app.supervisor.discover()),
             timeout=60)
    for summary in app.supervisor.discover():
        pid = replay(summary.run_dir).pid
        if pid:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=30)


# The form keeps its defaults (a 1600-step dry run, long enough for each test): opening a folded form section
# here would let its empty number fields read as 0, which the config refuses (the form's own work, not this file's).


def test_double_start_runs_once_and_buttons_follow_the_run(page, dry_app):
    """Items 1 and 3: a double click on Start starts one run; while it runs Start is off, Queue another run,
    Stop, Sample now and Save now are on; once stopped with a state, Resume is on and the rest off."""
    from playwright.sync_api import expect

    settle(dry_app)
    before = all_runs(dry_app)
    open_app(page, dry_app.url)
    open_tab(page, "Train")
    expect(page.locator("#start-btn")).to_be_enabled()
    for name in ("#stop-btn", "#sample-now-btn", "#save-now-btn", "#resume-btn", "#queue-btn"):
        expect(page.locator(name)).to_be_disabled()
    page.locator("#start-btn").dblclick()
    expect(page.locator("#start-message")).to_contain_text(re.compile(r"\bstarted · "))
    expect(page.locator("#start-btn")).to_be_disabled()
    for name in ("#stop-btn", "#sample-now-btn", "#save-now-btn", "#queue-btn"):
        expect(page.locator(name)).to_be_enabled()
    started = new_runs(dry_app, before)
    assert len(started) == 1, started  # the second click queued no duplicate
    expect(row(page, started[0])).to_contain_text("running")

    page.locator("#stop-btn").click()
    expect(page.locator("#run-status")).to_contain_text("stopped", timeout=ms(60))
    expect(page.locator("#resume-btn")).to_be_enabled()
    for name in ("#stop-btn", "#sample-now-btn", "#save-now-btn"):
        expect(page.locator(name)).to_be_disabled()
    expect(page.locator("#start-btn")).to_be_enabled()
    assert len(new_runs(dry_app, before)) == 1
    settle(dry_app)


def test_queue_view_buttons_act_on_their_own_run(page, dry_app):
    """Items 1 and 2: Queue another run queues visibly; Cancel on a queued row cancels that job and leaves the
    running run alone; Stop on the running row stops that run."""
    from playwright.sync_api import expect

    settle(dry_app)
    before = all_runs(dry_app)
    open_app(page, dry_app.url)
    open_tab(page, "Train")
    page.locator("#start-btn").click()
    expect(page.locator("#queue-btn")).to_be_enabled()
    page.locator("#queue-btn").click()
    expect(page.locator("#start-message")).to_contain_text("queued (position 1)")
    busy, waits = new_runs(dry_app, before)
    expect(row(page, waits)).to_contain_text("queued (position 1)")
    expect(row(page, busy)).to_contain_text("running")

    row(page, waits).get_by_role("button", name="Cancel").click()
    expect(row(page, waits)).to_contain_text("cancelled")
    assert dry_app.supervisor.poll(busy).status == "running"  # Cancel did not touch the active run

    row(page, busy).get_by_role("button", name="Stop").click()
    expect(row(page, busy)).to_contain_text("stopped", timeout=ms(60))
    expect(row(page, busy).get_by_role("button", name="Resume")).to_be_visible()
    assert replay(busy).terminal == "stopped" and (waits / "cancelled").is_file()
    settle(dry_app)


def test_load_this_runs_settings_fills_the_form_from_its_job(page, dry_app):
    """Item 9: the form changed after a run; Load this run's settings brings that run's values back, from the
    picker's run or from its row in the queue view."""
    from playwright.sync_api import expect

    settle(dry_app)
    before = all_runs(dry_app)
    open_app(page, dry_app.url)
    open_tab(page, "Model & preset")
    fill(page, "#cfg-output_name input", "first-settings")
    open_tab(page, "Train")
    page.locator("#start-btn").click()
    expect(page.locator("#start-message")).to_contain_text(re.compile(r"\bstarted · "))
    (run,) = new_runs(dry_app, before)
    row(page, run).get_by_role("button", name="Stop").click()
    expect(row(page, run)).to_contain_text("stopped", timeout=ms(60))

    open_tab(page, "Model & preset")
    fill(page, "#cfg-output_name input", "other-settings")
    open_tab(page, "Train")
    page.locator("#load-run-settings").click()
    expect(page.locator("#start-message")).to_contain_text("Loaded the settings of")
    assert field_value(page, "output_name") == "first-settings"

    open_tab(page, "Model & preset")
    fill(page, "#cfg-output_name input", "again-settings")
    open_tab(page, "Train")
    row(page, run).get_by_role("button", name="Load settings").click()
    # The message already names this run (the first load): wait for the field itself.
    expect(page.locator("#cfg-output_name input")).to_have_value("first-settings")
    settle(dry_app)


@pytest.mark.slow
def test_try_the_demo_leaves_the_users_form_as_it_was(page, dry_app):
    """Item 6: the demo runs with its own settings; what the user typed stays, and the demo's sample prompts
    never reach the form. (Slow: the demo's tiny model is built for real, in a child process.)"""
    from playwright.sync_api import expect

    settle(dry_app)
    open_app(page, dry_app.url)
    open_tab(page, "Model & preset")
    fill(page, "#cfg-output_name input", "my-own-name")
    fill(page, "#cfg-pretrained_model_name_or_path input", "/my/models/base.safetensors")
    page.locator("#section-sample").get_by_text("Sample", exact=True).first.click()
    fill(page, "#cfg-sample_prompts input, #cfg-sample_prompts textarea", "my own prompt")
    open_tab(page, "Train")
    page.locator("#demo-btn").click()
    expect(page.locator("#start-message")).to_contain_text("Your form was left as it was", timeout=ms(300))
    open_tab(page, "Model & preset")
    assert field_value(page, "output_name") == "my-own-name"
    assert field_value(page, "pretrained_model_name_or_path") == "/my/models/base.safetensors"
    assert field_value(page, "sample_prompts") == "my own prompt"
    settle(dry_app)


def test_jobs_queued_before_a_restart_wait_for_start_queue(page, tmp_path, monkeypatch):
    """Item 19: jobs left queued when the UI closed are listed after the restart as waiting for the user, and start
    only when Start queue is pressed."""
    from playwright.sync_api import expect
    from ui_helpers import STEP_SECONDS, serve, stop_all

    from app.supervisor import JobSupervisor
    from training.contract.config import TrainConfig

    monkeypatch.setenv("LORAFORGE_DRY_RUN_STEP_SECONDS", STEP_SECONDS)
    data = tmp_path / "data"
    before = JobSupervisor(data, dry_run=True)  # the UI before the restart
    running = before.start(TrainConfig(output_name="before", max_train_steps=5000))
    left = before.start(TrainConfig(output_name="left", max_train_steps=10))
    before.stop(running.run_dir, grace_s=10)
    # Watched through the files: a poll() of the old supervisor would start the queued job.
    wait_for(lambda: replay(running.run_dir).terminal == "stopped" and not pid_alive(running.pid), timeout=60)
    assert (left.run_dir / "queued").is_file()

    ui, demo = serve(data, dry_run=True)  # the restart
    try:
        open_app(page, ui.url)
        open_tab(page, "Train")
        expect(row(page, left.run_dir)).to_contain_text("queued (waiting for you since the restart)")
        expect(page.locator("#queue-start-held")).to_be_visible()
        assert (left.run_dir / "queued").is_file()  # the page's polling did not start it
        page.locator("#queue-start-held").click()
        expect(row(page, left.run_dir)).to_contain_text("done", timeout=ms(60))
        expect(page.locator("#queue-start-held")).to_be_hidden()
    finally:
        stop_all(ui.supervisor)
        demo.close()
