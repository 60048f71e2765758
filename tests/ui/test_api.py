"""The app's public endpoints through gradio_client, on the in-process app with the dry-run trainer."""

from __future__ import annotations

import pytest
from gradio_client import Client
from ui_helpers import NOISE_FILTERS, wait_for

from app.runs import replay
from training.contract.events import read_events
from training.contract.processes import pid_alive

pytestmark = [pytest.mark.filterwarnings(f) for f in NOISE_FILTERS]

SHORT_RUN = {"max_train_steps": 40, "sample_prompts": "a cat", "sample_every_n_steps": 20}


def newest_runs(supervisor):
    return supervisor.discover()


def test_public_endpoints(client):
    api = client.view_api(return_format="dict", print_info=False)
    names = set(api["named_endpoints"])
    assert {"/start_run", "/queue_run", "/stop_run", "/resume_run", "/sample_now", "/save_now", "/try_demo",
            "/show_run", "/device_report"} <= names
    assert not any("poll" in n or "attach" in n for n in names)  # the timer's tick stays private
    params = {p["parameter_name"] for p in api["named_endpoints"]["/start_run"]["parameters"]}
    assert {"pretrained_model_name_or_path", "max_train_steps", "output_name"} <= params


def test_dry_run_reaches_done_and_second_start_queues(client, dry_app):
    first = client.predict(output_name="first", **SHORT_RUN, api_name="/start_run")[0]
    assert first.startswith("**started**"), first
    again = client.predict(output_name="second", **SHORT_RUN, api_name="/start_run")[0]
    assert again.startswith("**Not started:**") and "Queue another run" in again, again  # no duplicate by Start
    second = client.predict(output_name="second", **SHORT_RUN, api_name="/queue_run")[0]
    assert second.startswith("**queued**") and "position 1" in second, second

    sup = dry_app.supervisor
    run_dirs = {s.output_name: s.run_dir for s in sup.discover()}

    def finished(name):
        sup.poll()  # starts the queued run once the first has ended
        return replay(run_dirs[name]).terminal == "done"

    wait_for(lambda: finished("first"), timeout=60)
    state = replay(run_dirs["first"])
    assert state.step == 40 and state.sample_paths
    wait_for(lambda: finished("second"), timeout=60)


def test_stop_then_resume(client, dry_app):
    sup = dry_app.supervisor
    wait_for(lambda: not sup.poll().active, timeout=60)
    assert client.predict(output_name="long", max_train_steps=2000, api_name="/start_run")[0].startswith("**started")
    wait_for(lambda: sup.poll().step >= 5, timeout=30)
    assert client.predict(api_name="/stop_run").startswith("Stopping")
    stopped = wait_for(lambda: (snap := sup.poll()).status == "stopped" and snap, timeout=30)
    assert stopped.state.state_path
    wait_for(lambda: not pid_alive(stopped.state.pid), timeout=30)  # "stopped" is written just before the exit

    text = client.predict(output_name="long", max_train_steps=2000, api_name="/resume_run")[0]
    assert text.startswith("**started"), text
    resumed = wait_for(lambda: (snap := sup.poll()).run_dir != stopped.run_dir and snap.step > stopped.step and snap,
                       timeout=30)
    assert resumed.state.pid
    # The new run continues from the stop: it starts at the stopped step, from the state folder the stop saved.
    stop_event = read_events(stopped.run_dir)[-1]
    assert stop_event["event"] == "stopped" and stop_event["state"] == stopped.state.state_path
    start = next(e for e in read_events(resumed.run_dir) if e["event"] == "start")
    assert start["start_step"] == stop_event["step"] and start["resumed_from"] == stop_event["state"]
    client.predict(api_name="/stop_run")
    wait_for(lambda: sup.poll().status == "stopped", timeout=30)


def test_bad_value_gives_specific_message(client):
    text = client.predict(network_dim=0, api_name="/start_run")[0]
    assert "network_dim" in text and "Traceback" not in text and text.startswith("**Not started:**")


def test_dry_run_checks_sample_prompts_before_starting(client, dry_app):
    before = len(dry_app.supervisor.discover())
    text = client.predict(sample_every_n_epochs=1, api_name="/start_run")[0]
    assert text.startswith("**Not started:**") and "sample_prompts" in text
    assert len(dry_app.supervisor.discover()) == before


def test_stop_when_idle_says_so(client, dry_app):
    wait_for(lambda: not dry_app.supervisor.poll().active, timeout=60)
    assert client.predict(api_name="/stop_run") == "Nothing is running."


def test_save_toml_refuses_paths_outside_data_dir(client, dry_app):
    text = client.predict(config_file="/etc/x.toml", api_name="/save_toml")
    assert "outside the data folder" in text
    text = client.predict(config_file="mine.toml", api_name="/save_toml")
    assert text.startswith("Saved") and (dry_app.settings.configs_dir / "mine.toml").is_file()
    assert "python -m training --config" in text


def test_real_mode_checks_the_model_and_dataset_paths(real_app, tmp_path):
    client = Client(real_app.url, verbose=False)
    runs_before = len(real_app.supervisor.discover())
    text = client.predict(pretrained_model_name_or_path="", api_name="/start_run")[0]
    assert text.startswith("**Not started:**") and "pretrained_model_name_or_path is not set" in text
    text = client.predict(pretrained_model_name_or_path=str(tmp_path / "nope.safetensors"),
                          api_name="/start_run")[0]
    assert "does not exist" in text
    assert len(real_app.supervisor.discover()) == runs_before  # nothing was started or queued
