"""The Train tab through gradio_client: Try the demo (a real tiny training run), Sample/Save now, the run picker."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import NOISE_FILTERS, UiApp, run_of, show, wait_for

from app.demo_setup import DEMO_LABEL
from app.runs import replay
from app.tabs.train_view import FOLLOW, run_choices
from training.contract.config_io import load_config
from training.contract.events import read_events
from training.contract.processes import pid_alive

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]

def wait_idle(app: UiApp) -> None:
    """No run active, and every trainer process gone: a stopped run writes "stopped" just before it exits, and a
    Start in between would queue."""
    wait_for(lambda: not app.supervisor.poll().active, timeout=60)
    for summary in app.supervisor.discover():
        pid = replay(summary.run_dir).pid
        if pid:
            wait_for(lambda pid=pid: not pid_alive(pid), timeout=30)


def events_of(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in read_events(run_dir) if e["event"] == kind]


def captions(gallery: list[dict[str, Any]]) -> list[str]:
    return [item["caption"] for item in gallery]


# --- Try the demo: a real run on the tiny random model


@pytest.mark.slow
def test_try_the_demo_runs_its_own_settings_and_says_it_is_a_pipeline_check(trained_demo):
    demo_dir = trained_demo.app.settings.demo_dir
    assert trained_demo.message.startswith(f"**{DEMO_LABEL}.**\n\n**started**"), trained_demo.message
    assert "Your form was left as it was" in trained_demo.message
    job = load_config(run_of(trained_demo.message) / "job.toml")[0]
    assert job.pretrained_model_name_or_path == str(demo_dir / "model") and job.output_name == "demo"
    assert job.train_data_dir == str(demo_dir / "dataset") and job.max_train_steps == 48


@pytest.mark.slow
def test_demo_run_reaches_done_with_a_checked_lora(trained_demo):
    assert trained_demo.final["status"].startswith("**done**"), trained_demo.final["log"]
    assert DEMO_LABEL in trained_demo.final["status"] and trained_demo.final["guidance"].startswith("**The run is done")
    assert "step 48/48" in trained_demo.final["progress"] and 'aria-valuenow="48"' in trained_demo.final["bar"]
    run_dir = run_of(trained_demo.message)
    done = events_of(run_dir, "done")[0]
    assert Path(done["path"]).is_file() and done["path"].endswith("demo.safetensors")
    checks = [e["check"] for e in events_of(run_dir, "checkpoint")]
    assert len(checks) == 3  # steps 16, 32 and the final save
    for check in checks:
        matched = re.search(r"(\d+) of (\d+) modules matched", check)
        assert matched and matched[1] == matched[2] and int(matched[1]) > 0, check
    assert len(events_of(run_dir, "val")) >= 2


@pytest.mark.slow
def test_demo_samples_are_grouped_by_step_newest_first(trained_demo):
    texts = captions(trained_demo.final["samples"])
    assert len(texts) == 4  # 2 prompts at steps 24 and 48
    assert texts[:2] == ["step 48: lfbot, robot, white background",
                         "step 48: lfbot, robot, arms up, outdoors, sky, grass"]
    steps = [int(re.match(r"step (\d+)", t)[1]) for t in texts]
    assert steps == sorted(steps, reverse=True)


@pytest.mark.slow
def test_demo_in_dry_run_mode_prepares_for_real_and_replays(client, dry_app, trained_demo):
    wait_idle(dry_app)
    # An earlier demo in the data folder is reused, not rebuilt.
    shutil.copytree(trained_demo.app.settings.demo_dir, dry_app.settings.demo_dir)
    run_dir = run_of(client.predict(api_name="/try_demo")[0])
    demo_toml = (dry_app.settings.demo_dir / "demo.toml").read_text(encoding="utf-8")
    assert str(dry_app.settings.demo_dir / "model") in demo_toml  # rewritten for this data folder
    wait_for(lambda: replay(run_dir).terminal == "done", timeout=60)
    assert events_of(run_dir, "start")[0]["dry_run"] is True
    assert show(client, str(run_dir))["status"].startswith("**done**")


def test_demo_failure_is_one_line(client, dry_app):
    demo_dir = dry_app.settings.demo_dir
    aside = demo_dir.with_name("demo-aside")
    if demo_dir.exists():
        demo_dir.rename(aside)
    demo_dir.write_text("a file where the demo folder goes", encoding="utf-8")
    try:
        message = client.predict(api_name="/try_demo")[0]
    finally:
        demo_dir.unlink()
        if aside.exists():
            aside.rename(demo_dir)
    assert message.startswith("**Demo not started:** cannot prepare the demo in"), message
    assert "\n" not in message and "Traceback" not in message


# --- Sample now / Save now (dry-run trainer)


def test_sample_and_save_now_need_a_running_run(client, dry_app):
    wait_idle(dry_app)
    assert client.predict(api_name="/sample_now") == "Nothing is running."
    assert client.predict(api_name="/save_now") == "Nothing is running."


def test_sample_and_save_now_act_on_the_running_run(client, dry_app):
    wait_idle(dry_app)
    run_dir = run_of(client.predict(output_name="on-request", max_train_steps=2000, sample_prompts="a cat;a dog",
                                    api_name="/start_run")[0])
    try:
        wait_for(lambda: replay(run_dir).step >= 3, timeout=30)
        assert client.predict(api_name="/sample_now").startswith("Samples requested")
        sample = wait_for(lambda: events_of(run_dir, "sample"), timeout=30)[0]
        assert len(sample["paths"]) == 2 and all(Path(p).is_file() for p in sample["paths"])
        assert client.predict(api_name="/save_now").startswith("Save requested")
        saved = wait_for(lambda: events_of(run_dir, "checkpoint"), timeout=30)[0]
        assert Path(saved["path"]).name.startswith("on-request-step") and Path(saved["path"]).is_file()
        assert wait_for(lambda: list(run_dir.glob("on-request-step*-state")), timeout=30)  # a save now keeps state
        gallery = show(client, str(run_dir))["samples"]
        assert captions(gallery) == [f"step {sample['step']}: a cat", f"step {sample['step']}: a dog"]
    finally:
        client.predict(api_name="/stop_run")
        wait_idle(dry_app)


def test_sample_now_without_prompts_says_why(client, dry_app):
    wait_idle(dry_app)
    run_dir = run_of(client.predict(output_name="no-prompts", max_train_steps=2000, sample_prompts="",
                                    api_name="/start_run")[0])
    try:
        wait_for(lambda: replay(run_dir).step >= 1, timeout=30)
        assert client.predict(api_name="/sample_now").startswith("**Not requested:** this run has no sample_prompts")
    finally:
        client.predict(api_name="/stop_run")
        wait_idle(dry_app)
    assert not events_of(run_dir, "sample")


# --- the run picker


def test_run_picker_shows_any_run_and_a_new_start_follows_again(client, dry_app):
    wait_idle(dry_app)
    run_a = run_of(client.predict(output_name="pick-a", max_train_steps=10, sample_prompts="a cat",
                                  sample_every_n_steps=5, api_name="/start_run")[0])
    wait_for(lambda: replay(run_a).terminal == "done", timeout=60)
    wait_idle(dry_app)
    run_b = run_of(client.predict(output_name="pick-b", max_train_steps=20, api_name="/start_run")[0])
    wait_for(lambda: replay(run_b).terminal == "done", timeout=60)

    a = show(client, str(run_a))
    assert a["status"].startswith("**done**") and str(run_a) in a["status"] and "step 10/10" in a["progress"]
    assert captions(a["samples"]) == ["step 10: a cat", "step 5: a cat"]
    assert a["chart"] is not None
    b = show(client, str(run_b))
    assert str(run_b) in b["status"] and "step 20/20" in b["progress"] and b["samples"] == []
    assert show(client, FOLLOW)["progress"].startswith("step 20/20")  # follow: the newest run when none is active
    again = show(client, str(run_a))  # back to a: redrawn for a, not left showing b's picture
    assert "step 10/10" in again["progress"] and captions(again["samples"]) == ["step 10: a cat", "step 5: a cat"]
    unchanged = show(client, str(run_a))  # nothing new in a: chart and gallery are not sent again
    assert unchanged["chart"] == unchanged["samples"] == {"__type__": "update"}
    assert "step 10/10" in unchanged["progress"]

    bad = show(client, "/etc")
    assert bad["status"].startswith("**Not shown:**") and "not a run folder" in bad["status"]

    labels = [label for label, _ in run_choices(dry_app.supervisor)]
    assert labels[0] == "Active or newest run"
    assert labels.index(next(x for x in labels if x.startswith("pick-b · "))) < labels.index(
        next(x for x in labels if x.startswith("pick-a · ")))
    assert any(x.startswith(f"pick-a · {run_a.name} · done") for x in labels)

    result = client.predict(output_name="pick-c", max_train_steps=10, api_name="/start_run")
    assert result[0].startswith("**started**") and result[-1]["value"] == FOLLOW
    wait_idle(dry_app)


# --- polling: slow when idle


def test_the_page_polls_slowly_when_nothing_runs_and_every_second_while_a_run_goes(client, dry_app):
    """Item 17: the page's timer ticks every 5 s while nothing runs or waits (only to notice a run started
    elsewhere), every second while one does."""
    from app.tabs.train import IDLE_POLL_SECONDS, POLL_SECONDS

    wait_idle(dry_app)
    idle = show(client, FOLLOW)["timer"]
    assert idle.get("value") == IDLE_POLL_SECONDS and idle.get("active") is True, idle
    run_dir = run_of(client.predict(output_name="polled", max_train_steps=2000, api_name="/start_run")[0])
    try:
        wait_for(lambda: replay(run_dir).step >= 1, timeout=30)
        busy = show(client, FOLLOW)["timer"]
        assert busy.get("value") == POLL_SECONDS and busy.get("active") is True, busy
    finally:
        client.predict(api_name="/stop_run")
        wait_idle(dry_app)


# --- the queue: Cancel all queued


def test_cancel_all_queued_cancels_the_waiting_jobs_and_leaves_the_running_run(client, dry_app):
    wait_idle(dry_app)
    running = run_of(client.predict(output_name="keeps-running", max_train_steps=2000, api_name="/start_run")[0])
    waiting = [client.predict(output_name=f"waits-{n}", max_train_steps=5, api_name="/queue_run")[0] for n in (1, 2)]
    assert all(text.startswith("**queued**") for text in waiting), waiting
    try:
        message = client.predict(api_name="/cancel_queued")
        assert message == "Cancelled 2 queued runs.", message
        statuses = {s.output_name: s.status for s in dry_app.supervisor.discover()}
        assert statuses["waits-1"] == statuses["waits-2"] == "cancelled"
        assert dry_app.supervisor.poll(running).status in ("starting", "running")
    finally:
        client.predict(api_name="/stop_run")
        wait_idle(dry_app)
