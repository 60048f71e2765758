"""The dry run is what UI tests train with: its event stream, files, control flags and exit codes must match a real
run's, and it must stay torch-free so those tests start in a fraction of a second."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from timing import scaled

from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.control import Control
from training.contract.events import read_events
from training.run.dry_run import STEP_SECONDS_ENV

ROOT = Path(__file__).resolve().parents[2]


def write_job(tmp_path: Path, **options) -> Path:
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), output_name="demo", **options)
    job = tmp_path / "job.toml"
    save_config(cfg, job)
    return job


def dry_run_cmd(job: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training", "--config", str(job), "--dry-run", *extra]


def child_env(step_seconds: float) -> dict[str, str]:
    return dict(os.environ, **{STEP_SECONDS_ENV: str(step_seconds), "PYTHONPATH": str(ROOT)})


def run_dry(job: Path, *extra: str, step_seconds: float = 0.002) -> subprocess.CompletedProcess:
    return subprocess.run(dry_run_cmd(job, *extra), capture_output=True, text=True, timeout=scaled(30),
                          env=child_env(step_seconds), cwd=ROOT)


def wait_for_event(run_dir: Path, name: str, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_events(run_dir)
        if any(e["event"] == name for e in events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"no {name!r} event within {timeout} s")


def safetensors_metadata(path: Path) -> dict:
    """Parse the header by hand, as the format defines it: u64 little-endian length, then JSON."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    assert len(raw) == 8 + length and length % 8 == 0
    return json.loads(raw[8:])["__metadata__"]


def test_dry_run_writes_a_valid_event_stream_ending_in_done(tmp_path):
    job = write_job(tmp_path, max_train_steps=12, sample_prompts="a cat;a dog --d 7", sample_every_n_steps=5,
                    save_every_n_steps=4, validation_every_n_steps=3)
    result = run_dry(job)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    events = read_events(run)
    names = [e["event"] for e in events]
    assert names[0] == "status" and names[-1] == "done" and names.count("start") == 1
    assert all(e["v"] == 1 and isinstance(e["t"], float) for e in events)
    start = events[names.index("start")]
    assert start["total_steps"] == 12 and start["pid"] > 0 and start["config"]["output_name"] == "demo"
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert all(0 < e["loss"] < 1 and 0 < e["smoothed"] < 1 and e["lr"]["unet"] >= 0 for e in steps)
    assert [e["step"] for e in events if e["event"] == "val"] == [0, 3, 6, 9, 12]
    samples = [e for e in events if e["event"] == "sample"]
    assert [e["step"] for e in samples] == [5, 10] and all(len(e["paths"]) == 2 for e in samples)
    for path in samples[0]["paths"]:
        assert Path(path).parent == run / "sample"
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (64, 64)
    checkpoints = [Path(e["path"]).name for e in events if e["event"] == "checkpoint"]
    assert checkpoints == ["demo-step00000004.safetensors", "demo-step00000008.safetensors", "demo.safetensors"]
    assert events[-1]["path"] == str(run / "demo.safetensors") and events[-1]["step"] == 12
    assert safetensors_metadata(run / "demo.safetensors")["ss_output_name"] == "demo"
    assert (run / "job.toml").is_file()


def test_placeholder_lora_loads_with_the_safetensors_library(tmp_path):
    safe_open = pytest.importorskip("safetensors").safe_open
    pytest.importorskip("numpy")
    assert run_dry(write_job(tmp_path, max_train_steps=2)).returncode == 0
    with safe_open(str(tmp_path / "run" / "demo.safetensors"), framework="numpy") as f:
        assert list(f.keys()) == [] and f.metadata()["ss_steps"] == "2"


def test_control_flags_sample_save_and_stop(tmp_path):
    job = write_job(tmp_path, max_train_steps=5000, sample_prompts="a cat")
    run = tmp_path / "run"
    proc = subprocess.Popen(dry_run_cmd(job), env=child_env(0.01), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_event(run, "step")
        for flag in ("sample", "save"):
            Control(run).request(flag)
        wait_for_event(run, "state_saved")
        wait_for_event(run, "sample")
        Control(run).request("stop")
        assert proc.wait(timeout=scaled(10)) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    events = read_events(run)
    last = events[-1]
    assert last["event"] == "stopped" and 0 < last["step"] < 5000
    assert Path(last["last_checkpoint"]).is_file() and Path(last["last_checkpoint"]).name.startswith("demo-step")
    state = json.loads((Path(last["state"]) / "train_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == last["step"]
    assert not (run / "control" / "sample").exists() and not (run / "control" / "save").exists()

    # The stopped run resumes into its own folder (the run-folder check allows exactly that).
    resumed = run_dry(job, "--set", f"max_train_steps={last['step'] + 3}", "--set", f"resume={last['state']}")
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(run)
    assert events[-1]["event"] == "done" and events[-1]["step"] == last["step"] + 3
    assert [e for e in events if e["event"] == "start"][-1]["start_step"] == last["step"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_sigterm_stops_like_the_real_run(tmp_path):
    job = write_job(tmp_path, max_train_steps=5000)
    proc = subprocess.Popen(dry_run_cmd(job), env=child_env(0.01), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_event(tmp_path / "run", "step")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=scaled(10)) == 0
    finally:
        proc.kill()
        proc.wait()
    assert read_events(tmp_path / "run")[-1]["event"] == "stopped"


def test_bad_config_exits_2_with_one_line(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'output_dir = "{(tmp_path / "run").as_posix()}"\nnetwork_dims = 8\n', encoding="utf-8")
    result = run_dry(job)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: job.toml: unknown key 'network_dims' (did you mean 'network_dim'?)"
    assert not (tmp_path / "run" / "events.jsonl").exists()


def test_a_finished_run_folder_is_not_overwritten(tmp_path):
    job = write_job(tmp_path, max_train_steps=2)
    assert run_dry(job).returncode == 0
    again = run_dry(job)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_no_model_or_dataset_needed_but_missing_sample_prompts_is_refused(tmp_path):
    job = write_job(tmp_path, max_train_steps=2, sample_every_n_steps=1,
                    pretrained_model_name_or_path="/nowhere/model.safetensors", train_data_dir="/nowhere/data")
    result = run_dry(job)
    assert result.returncode == 2 and "sample_prompts is empty" in result.stderr


def test_a_dry_run_never_imports_torch(tmp_path):
    job = write_job(tmp_path, max_train_steps=3)
    probe = ("import runpy, sys\n"
             f"sys.argv = ['training', '--config', {str(job)!r}, '--dry-run']\n"
             "try:\n    runpy.run_module('training', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "heavy = sorted({'torch', 'diffusers', 'peft', 'accelerate', 'gradio'} & set(sys.modules))\n"
             "print(code, heavy)\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(0.001),
                         cwd=ROOT, timeout=scaled(30))
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stderr
    assert read_events(tmp_path / "run")[-1]["event"] == "done"
    assert time.monotonic() - started < scaled(10)  # no model, no dataset: a UI test's run is seconds


def test_importing_the_dry_run_module_pulls_no_torch():
    probe = "import sys, training.run.dry_run; print(sorted({'torch', 'diffusers', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_dry_run_reports_the_models_family_as_a_real_run_does(tmp_path):
    """The UI's Train tab shows the family from the start event: an SDXL file must not be reported as SD1."""
    import numpy as np
    from safetensors.numpy import save_file

    model = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.positional_embedding": np.zeros((77, 8), np.float16)}, str(model))
    job = write_job(tmp_path, pretrained_model_name_or_path=str(model), max_train_steps=3)
    assert run_dry(job).returncode == 0
    start = next(e for e in read_events(tmp_path / "run") if e["event"] == "start")
    assert start["family"] == "sdxl"


def test_checkpoints_record_epochs_done_and_a_self_check_marked_as_a_dry_run(tmp_path):
    """Like a real run: a checkpoint's epoch counts completed epochs, a step's epoch is the 1-based one in progress."""
    job = write_job(tmp_path, max_train_steps=12, save_every_n_steps=3, validation_every_n_steps=0)
    assert run_dry(job).returncode == 0
    events = read_events(tmp_path / "run")
    per_epoch = next(e for e in events if e["event"] == "start")["steps_per_epoch"]
    step_epoch = {e["step"]: e["epoch"] for e in events if e["event"] == "step"}
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [3, 6, 9, 12]
    for c in checkpoints:
        assert c["epoch"] == c["step"] // per_epoch
        assert step_epoch[c["step"]] == (c["step"] - 1) // per_epoch + 1
        assert c["check"] == "dry run: placeholder file without tensors"
        assert c["check_result"] == {"expected": 0, "matched": 0, "missing": 0, "ok": False, "parts": {},
                                     "problems": [], "warnings": [], "dry_run": True}
