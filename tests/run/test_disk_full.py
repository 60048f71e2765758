"""A disk that fills up during a save, with the real trainer in real subprocesses: one line saying where and how
much, no half-written folder left to keep the disk full, the last good save kept, and resuming from it works.

Two ways to fill a disk: a real small filesystem (a tmpfs, where root may mount one) and, everywhere, a write that
fails with ENOSPC in the middle of the state save (a ``sitecustomize`` in the child makes torch.save write part of
its file, then raise what the OS raises on a full disk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from timing import scaled

from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.disk_space import folder_size, free_bytes, mount_point
from training.contract.events import read_events
from training.contract.layout import STATE_FILE, RunLayout

ROOT = Path(__file__).resolve().parents[2]
FULL_DISK_ENV = "LORAFORGE_TEST_FULL_DISK_IN"

# Runs in the trainer at start-up when FULL_DISK_ENV names a folder: torch.save into that folder writes 4 KiB, then
# fails as a full disk does.
FULL_DISK_SITECUSTOMIZE = f"""
import errno, os
folder = os.environ.get({FULL_DISK_ENV!r})
if folder:
    import torch
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and folder in str(f):
            with open(f, "wb") as out:
                out.write(bytes(4096))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
"""


def write_job(path: Path, model: Path, data: Path, out: Path, **extra) -> Path:
    cfg = TrainConfig(pretrained_model_name_or_path=str(model), train_data_dir=str(data), output_dir=str(out),
                      resolution="64", min_bucket_reso=64, max_bucket_reso=128, network_dim=4, network_alpha=2.0,
                      learning_rate=1e-3, mixed_precision="no", seed=3, save_state=True, **extra)
    save_config(cfg, path)
    return path


def train(job: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", "--config", str(job), *extra], capture_output=True,
                          text=True, timeout=scaled(300), cwd=ROOT, env=dict(os.environ, **(env or {})))


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error")]


def saved_step(state: Path) -> int:
    return json.loads((state / STATE_FILE).read_text(encoding="utf-8"))["global_step"]


@pytest.mark.slow
def test_a_disk_that_fills_during_a_state_save(tmp_path, tiny_sd1, dataset_dir):
    out = tmp_path / "run"
    layout = RunLayout(out)
    job = write_job(tmp_path / "job.toml", tiny_sd1, dataset_dir, out, max_train_steps=8, save_every_n_steps=4)
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(FULL_DISK_SITECUSTOMIZE, encoding="utf-8")
    full = train(job, env={"PYTHONPATH": f"{tmp_path / 'inject'}{os.pathsep}{ROOT}",
                           FULL_DISK_ENV: layout.state_tmp("lora").name})  # the final state, after step 8

    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    (message,) = error_lines(full.stderr)
    assert message.startswith(f"error: no space left on {mount_point(out)} while saving the state lora-state "
                              f"(about 0.")
    assert message.endswith(" MB needed); free some space there and run again (earlier saves are kept)")
    assert read_events(out)[-1]["event"] == "error" and read_events(out)[-1]["traceback"] is None
    assert not layout.state_tmp("lora").exists() and not list(out.glob(".*"))  # nothing half-written is left
    earlier = layout.state_dir("lora-step00000004")
    assert saved_step(earlier) == 4 and not layout.state_dir("lora").exists()

    resumed = train(job, "--set", f"resume='{earlier}'")
    assert resumed.returncode == 0, resumed.stderr
    assert read_events(out)[-1]["event"] == "done" and saved_step(layout.state_dir("lora")) == 8


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MB filesystem (tmpfs); mounting needs root, so elsewhere this is skipped (the ENOSPC test above
    covers the same code everywhere)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True,
                             text=True) if os.name != "nt" else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_save_that_cannot_fit_on_a_real_small_disk_is_refused_before_it_starts(tmp_path, tiny_sd1, dataset_dir,
                                                                                  small_disk):
    out = small_disk / "run"
    layout = RunLayout(out)
    job = write_job(tmp_path / "job.toml", tiny_sd1, dataset_dir, out, max_train_steps=4)
    assert train(job).returncode == 0
    state, lora = layout.state_dir("lora"), layout.lora("lora")
    # Fill the disk until the next final LoRA fits but it and its state do not.
    filler = small_disk / "filler"
    filler.write_bytes(bytes(free_bytes(small_disk) - lora.stat().st_size - folder_size(state) // 2))

    longer = train(job, "--set", f"resume='{state}'", "--set", "max_train_steps=8")
    assert longer.returncode == 1 and "Traceback" not in longer.stderr
    (message,) = error_lines(longer.stderr)
    assert message.startswith(f"error: no space left on {small_disk} while saving the ")
    assert not list(out.glob(".*")) and saved_step(state) == 4  # nothing partial; the last good state as it was

    filler.unlink()
    resumed = train(job, "--set", f"resume='{state}'", "--set", "max_train_steps=8")
    assert resumed.returncode == 0, resumed.stderr
    assert saved_step(state) == 8
