"""Faults around the run folder, through the real CLI in real subprocesses (the dry run, which claims its folder
exactly as a real run does; the real trainer where its own code path differs): two runs in one folder, a finished
run's saves, leftovers of a kill -9, a folder that is a file or read-only, and --set / NaN messages."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from timing import scaled

from app.runs import failure_message
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.control import Control
from training.contract.events import read_events
from training.contract.layout import LOCK_FILE, LOG_FILE, RunLayout
from training.run.dry_run import STEP_SECONDS_ENV

ROOT = Path(__file__).resolve().parents[2]


def write_job(tmp_path: Path, out: Path | None = None, **options) -> Path:
    cfg = TrainConfig(output_dir=str(out or tmp_path / "run"), output_name="demo", **options)
    job = tmp_path / "job.toml"
    save_config(cfg, job)
    return job


def cli_cmd(job: Path, *extra: str, dry: bool = True) -> list[str]:
    return [sys.executable, "-m", "training", "--config", str(job), *(["--dry-run"] if dry else []), *extra]


def child_env(step_seconds: float = 0.002) -> dict[str, str]:
    return dict(os.environ, **{STEP_SECONDS_ENV: str(step_seconds), "PYTHONPATH": str(ROOT)})


def run_cli(job: Path, *extra: str, dry: bool = True, step_seconds: float = 0.002) -> subprocess.CompletedProcess:
    return subprocess.run(cli_cmd(job, *extra, dry=dry), capture_output=True, text=True, timeout=scaled(120),
                          env=child_env(step_seconds), cwd=ROOT)


def start_cli(job: Path, step_seconds: float) -> subprocess.Popen:
    return subprocess.Popen(cli_cmd(job), env=child_env(step_seconds), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_event(run_dir: Path, name: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if any(e["event"] == name for e in read_events(run_dir)):
            return
        assert proc.poll() is None, f"the run ended before its {name!r} event: {proc.stderr.read()}"
        time.sleep(0.02)
    raise AssertionError(f"no {name!r} event within {timeout} s")


@contextlib.contextmanager
def running(proc: subprocess.Popen):
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


# --- 18: one run per folder; a finished run's saves are never silently overwritten --------------------------------

def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_pid(tmp_path):
    run = tmp_path / "run"
    job = write_job(tmp_path, max_train_steps=100000)
    with running(start_cli(job, step_seconds=0.02)) as first:
        wait_for_event(run, "start", first)
        second = run_cli(job, "--set", "max_train_steps=3")
        assert second.returncode == 2, second.stderr
        (message,) = error_lines(second.stderr)
        assert message.startswith(f"error: output_dir {run} is in use by another run (PID {first.pid}, started ")
        assert message.endswith("); wait for it to end or stop it, or choose another output_dir")
        Control(run).request("stop")
        assert first.wait(timeout=scaled(20)) == 0, first.stderr.read()
    events = read_events(run)
    assert [e["event"] for e in events].count("start") == 1  # the second run wrote nothing into the stream
    assert events[-1]["event"] == "stopped" and events[-1]["step"] > 0
    assert not (run / LOCK_FILE).exists()  # let go when the run ended


@pytest.mark.skipif(os.name == "nt", reason="kill -9")
def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "run"
    job = write_job(tmp_path, max_train_steps=100000)
    with running(start_cli(job, step_seconds=0.02)) as killed:
        wait_for_event(run, "start", killed)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert json.loads((run / LOCK_FILE).read_text(encoding="utf-8"))["pid"] == killed.pid  # left behind

    again = run_cli(job, "--set", "max_train_steps=3")
    assert again.returncode == 0, again.stderr
    assert f"warning: {run} was locked by a run that is no longer running (PID {killed.pid}" in again.stderr
    warnings = [e for e in read_events(run) if e["event"] == "warning" and e["code"] == "stale_lock"]
    assert len(warnings) == 1 and read_events(run)[-1]["event"] == "done"
    assert not (run / LOCK_FILE).exists()


def test_a_lock_naming_a_reused_pid_is_stale(tmp_path):
    """The pid in the lock is alive (this test's own process) but started at another time: a new process that got
    the dead run's pid, so the folder is free."""
    run = tmp_path / "run"
    run.mkdir()
    import socket

    lock = {"pid": os.getpid(), "started": 1_000_000.0, "host": socket.gethostname()}
    (run / LOCK_FILE).write_text(json.dumps(lock), encoding="utf-8")
    result = run_cli(write_job(tmp_path, max_train_steps=2))
    assert result.returncode == 0, result.stderr
    assert f"no longer running (PID {os.getpid()}" in result.stderr


def test_a_finished_run_is_replaced_only_with_overwrite(tmp_path):
    run = tmp_path / "run"
    job = write_job(tmp_path, max_train_steps=8, save_every_n_steps=2, save_state=True)
    assert run_cli(job).returncode == 0
    earlier = sorted(p.name for p in RunLayout(run).saves_of("demo"))
    assert "demo-step00000006.safetensors" in earlier

    refused = run_cli(job)
    assert refused.returncode == 2
    assert error_lines(refused.stderr) == [
        f"error: output_dir {run} already holds a run (demo-step00000002.safetensors, "
        f"demo-step00000004.safetensors, demo-step00000006.safetensors, ...); choose a new output_dir, set resume "
        f"to one of its -state folders, or pass --overwrite to replace it"]

    replaced = run_cli(job, "--overwrite", "--set", "max_train_steps=3", "--set", "save_every_n_steps=50")
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(p.name for p in RunLayout(run).saves_of("demo")) == ["demo-state", "demo.safetensors"]
    events = read_events(run)
    assert [e["event"] for e in events].count("start") == 1 and events[-1]["step"] == 3  # only the new run
    assert "warning: --overwrite: deleted the earlier run's events.jsonl, demo-state" in replaced.stderr


def test_overwrite_and_resume_together_are_refused(tmp_path):
    job = write_job(tmp_path, max_train_steps=2, save_state=True)
    assert run_cli(job).returncode == 0
    both = run_cli(job, "--overwrite", "--set", f"resume='{tmp_path / 'run' / 'demo-state'}'")
    assert both.returncode == 2 and "--overwrite deletes the earlier run's saves" in both.stderr
    assert (tmp_path / "run" / "demo-state").is_dir()


def test_saves_named_like_this_runs_are_not_overwritten_even_without_an_event_log(tmp_path):
    """A LoRA from elsewhere (another trainer, a copied folder) named like this run's final save."""
    run = tmp_path / "run"
    run.mkdir()
    theirs = run / "demo.safetensors"
    theirs.write_bytes(b"someone else's LoRA")
    result = run_cli(write_job(tmp_path, max_train_steps=2))
    assert result.returncode == 2 and "already holds a run (demo.safetensors)" in result.stderr
    assert theirs.read_bytes() == b"someone else's LoRA"


# --- 21: leftovers of a kill -9 during a save are removed when a run starts or resumes ----------------------------

KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from training.contract.atomic import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half a LoRA")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def kill_during_lora_write(path: Path) -> Path:
    """A real process killed (SIGKILL) while the atomic writer has the LoRA half written; returns the temp file."""
    before = set(path.parent.glob(".*.tmp")) if path.parent.exists() else set()
    subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], env=child_env(), cwd=ROOT,
                   timeout=scaled(30))
    (left,) = set(path.parent.glob(".*.tmp")) - before
    return left


@pytest.mark.skipif(os.name == "nt", reason="kill -9")
def test_leftovers_of_killed_saves_are_removed_at_start_and_at_resume(tmp_path):
    run = tmp_path / "run"
    layout = RunLayout(run)
    partial_lora = kill_during_lora_write(layout.lora("demo-step00000004"))
    partial_state = layout.state_tmp("demo-step00000004")
    partial_state.mkdir()
    (partial_state / "optimizer.bin").write_bytes(b"\0" * 4096)

    job = write_job(tmp_path, max_train_steps=4, save_state=True)
    started = run_cli(job)
    assert started.returncode == 0, started.stderr
    assert not partial_lora.exists() and not partial_state.exists()
    assert (f"warning: removed 2 half-written file(s) left by an interrupted run: {partial_state.name}, "
            f"{partial_lora.name}") in started.stderr

    # killed again, now during the final save; the resume tidies before it goes on
    partial_lora = kill_during_lora_write(layout.lora("demo"))
    resumed = run_cli(job, "--set", "max_train_steps=6", "--set", f"resume='{layout.state_dir('demo')}'")
    assert resumed.returncode == 0, resumed.stderr
    assert not partial_lora.exists() and f"left by an interrupted run: {partial_lora.name}" in resumed.stderr
    assert not list(run.glob(".*.tmp")) and read_events(run)[-1]["event"] == "done"


# --- 22: an output_dir that cannot hold a run: one line naming it, on the terminal and as the UI's reason ---------

@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: permissions for a normal user; for root (who ignores them) a read-only
    tmpfs mounted there. Skipped where neither is possible."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.name == "nt":
        pytest.skip("POSIX permissions")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_output_dir_that_is_a_file_is_one_line_for_the_dry_run(tmp_path):
    a_file = tmp_path / "run"
    a_file.write_text("not a folder", encoding="utf-8")
    result = run_cli(write_job(tmp_path, max_train_steps=2))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: output_dir {a_file} is a file, not a folder: set output_dir to "
                                          f"a folder (it is created if missing)"]


def test_a_read_only_output_dir_is_one_line_for_the_dry_run(tmp_path, read_only_dir):
    result = run_cli(write_job(tmp_path, out=read_only_dir / "run", max_train_steps=2))
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: output_dir {read_only_dir / 'run'} is not writable "
                                          f"({read_only_dir} is where it would be created): choose a folder you "
                                          f"can write to, or change its permissions"]


def real_job(tmp_path: Path, model: Path, data: Path, out: Path) -> Path:
    return write_job(tmp_path, out=out, pretrained_model_name_or_path=str(model), train_data_dir=str(data),
                     resolution="64", min_bucket_reso=64, max_bucket_reso=128, network_dim=4, max_train_steps=2,
                     mixed_precision="no")


def test_unusable_output_dirs_stop_the_real_trainer_before_any_model_loads(tmp_path, tiny_sd1, dataset_dir,
                                                                            read_only_dir):
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    for out, problem in ((a_file, "is a file, not a folder"), (read_only_dir, "is not writable")):
        result = run_cli(real_job(tmp_path, tiny_sd1, dataset_dir, out), dry=False)
        assert result.returncode == 2
        assert error_lines(result.stderr) == [next(ln for ln in error_lines(result.stderr) if ln.startswith("error"))]
        assert f"error: output_dir {out} {problem}" in result.stderr and "events.jsonl" not in result.stderr


def test_the_ui_shows_why_a_trainer_failed_before_writing_events(tmp_path):
    """The supervisor sends the trainer's output to trainer.log and shows its last 'error:' line."""
    a_file = tmp_path / "run"
    a_file.write_text("x", encoding="utf-8")
    ui_folder = tmp_path / "ui-run"
    ui_folder.mkdir()
    with open(ui_folder / LOG_FILE, "w", encoding="utf-8") as log:
        code = subprocess.run(cli_cmd(write_job(tmp_path, max_train_steps=2)), stdout=log, stderr=subprocess.STDOUT,
                              env=child_env(), cwd=ROOT, timeout=scaled(60)).returncode
    assert failure_message(ui_folder, code) == (f"output_dir {a_file} is a file, not a folder: set output_dir to a "
                                                f"folder (it is created if missing)")


# --- 25: messages about --set values name --set; NaN and inf are "not a number" -----------------------------------

def test_set_errors_name_set_and_not_the_toml_file(tmp_path):
    job = write_job(tmp_path, max_train_steps=2)
    cases = {
        "learning_rate=abc": "error: --set learning_rate=abc: not a number (allowed: 0 < x <= 10)",
        "learning_rate=nan": "error: --set learning_rate=nan: not a number (allowed: 0 < x <= 10)",
        "network_alpha=inf": "error: --set network_alpha=inf: not a number (allowed: > 0)",
        "network_dim=abc": "error: --set network_dim=abc: not a whole number (allowed: 1 <= x <= 1024)",
        "network_dims=8": "error: --set network_dims=8: unknown key (did you mean 'network_dim'?)",
    }
    for pair, expected in cases.items():
        result = run_cli(job, "--set", pair)
        assert result.returncode == 2, pair
        assert error_lines(result.stderr) == [expected]


def test_nan_in_a_toml_file_is_not_a_number(tmp_path):
    for key, value in (("learning_rate", "nan"), ("max_grad_norm", "inf"), ("noise_offset", "-inf")):
        job = write_job(tmp_path, max_train_steps=2)
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", job.read_text(encoding="utf-8"), flags=re.M)
        job.write_text(text, encoding="utf-8")
        result = run_cli(job)
        assert result.returncode == 2
        (message,) = error_lines(result.stderr)
        assert message.startswith(f"error: job.toml: {key} = {value} is invalid: not a number")
