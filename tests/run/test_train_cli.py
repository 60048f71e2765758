"""End to end through the real CLI in a real subprocess, on a tiny random-weight model and a generated dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lora_checks import apply_with_diffusers, configured_scale
from safetensors.torch import load_file
from timing import scaled

from training.contract.control import Control
from training.contract.events import read_events


def write_config(path: Path, model: Path, data: Path, out: Path, **extra) -> Path:
    values = {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "network_dim": 4, "network_alpha": 2.0,
        "learning_rate": 1e-3, "max_train_steps": 12, "mixed_precision": "no", "seed": 3,
    } | extra
    lines = [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower()}"
             if isinstance(v, bool) else f"{k} = {v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True,
                          timeout=scaled(300), **kwargs)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["event"] == "step" and e["step"] >= step for e in read_events(out)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()}")
        time.sleep(0.2)
    raise AssertionError("no progress")


@pytest.mark.slow
def test_cli_trains_and_exports_a_checked_lora(tmp_path, tiny_sd1, dataset_dir):
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.toml", tiny_sd1, dataset_dir, out, save_every_n_steps=6,
                          sample_prompts="red, circle", sample_every_n_steps=12, save_state=True)
    result = cli("--config", str(config))
    assert result.returncode == 0, result.stderr

    events = read_events(out)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and "error" not in kinds
    start = next(e for e in events if e["event"] == "start")
    assert start["total_steps"] == 12 and start["family"] == "sd1" and start["config"]["network_dim"] == 4
    assert start["dataset"]["train_images_x_repeats"] == 6
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert all(k in steps[-1] for k in ("loss", "smoothed", "lr", "images_per_s", "elapsed", "eta", "epoch"))
    assert any(e["event"] == "val" for e in events)
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [Path(c["path"]).name for c in checkpoints] == ["lora-step00000006.safetensors", "lora.safetensors"]
    assert all(" modules matched (" in c["check"] for c in checkpoints)  # "... matched (N linear, M conv)"
    matched, _, total = checkpoints[-1]["check"].split()[:3]
    assert matched == total
    samples = [e for e in events if e["event"] == "sample"]
    assert samples and all(Path(p).is_file() for p in samples[0]["paths"])

    lora = load_file(str(out / "lora.safetensors"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in lora)
    # The trained file loads in diffusers with every module applied at alpha/r scale.
    from diffusers import StableDiffusionPipeline

    changed, expected, worst, lines = apply_with_diffusers(StableDiffusionPipeline.from_pretrained(tiny_sd1),
                                                           out / "lora.safetensors", "sd1", **configured_scale(events))
    assert changed == expected and len(expected) == len(lora) // 3 and worst <= 2e-3
    assert not [ln for ln in lines if "No LoRA keys" in ln or "unexpected" in ln.lower()]
    assert (out / "job.toml").is_file() and (out / "lora-step00000006-state" / "train_state.json").is_file()
    assert "buckets:" in result.stderr and "64x64" in result.stderr  # the bucket table is shown at start
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        assert list((out / "logs").rglob("events.out.tfevents*"))

    # A repeated command never overwrites the earlier run.
    again = cli("--config", str(config))
    assert again.returncode == 2 and "already holds a run" in again.stderr


RESUMED_NETWORKS = {
    "lora": {"network_dropout": 0.1},
    # every LoHa tensor (both Hadamard pairs, on Linears and 1x1 convs) and peft's rank/module dropout RNG survive
    # the stop; fewer steps, as LoHa rebuilds each weight change every step
    "loha": {"network_module": "lycoris.kohya", "network_args": ["algo=loha", "preset=attn-mlp", "rank_dropout=0.2",
                                                                  "module_dropout=0.1"], "max_train_steps": 12},
}


@pytest.mark.slow
@pytest.mark.parametrize("network", list(RESUMED_NETWORKS))
def test_stop_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_sd1, dataset_dir, network):
    common = {"max_train_steps": 24, "save_precision": "float", "lr_scheduler": "cosine"} | RESUMED_NETWORKS[network]
    total = common["max_train_steps"]
    straight = tmp_path / "straight"
    assert cli("--config", str(write_config(tmp_path / "a.toml", tiny_sd1, dataset_dir, straight,
                                             **common))).returncode == 0

    stopped = tmp_path / "stopped"
    config = write_config(tmp_path / "b.toml", tiny_sd1, dataset_dir, stopped, **common)
    proc = start_cli("--config", str(config))
    wait_for_step(stopped, 5, proc)
    Control(stopped).request("stop")  # what the UI's Stop button does
    assert proc.wait(timeout=scaled(120)) == 0
    last = read_events(stopped)[-1]
    assert last["event"] == "stopped" and 5 <= last["step"] < total
    assert Path(last["last_checkpoint"]).is_file() and Path(last["state"]).is_dir()

    mismatched = cli("--config", str(config), "--set", f"resume='{last['state']}'", "--set", "network_dim=8")
    assert mismatched.returncode == 2 and "does not match this run's network" in mismatched.stderr

    resumed = cli("--config", str(config), "--set", f"resume='{last['state']}'")
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(stopped)
    assert events[-1]["event"] == "done"
    resumed_steps = [e["step"] for e in events if e["event"] == "step"]
    assert resumed_steps == list(range(1, total + 1))  # no step counted twice or lost

    a, b = load_file(str(straight / "lora.safetensors")), load_file(str(stopped / "lora.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.endswith(".hada_w2_b") for k in a) == (network == "loha")  # the type asked for was trained
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5 * (1 + a[key].abs().max()), key


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_ctrl_c_saves_lora_and_state(tmp_path, tiny_sd1, dataset_dir):
    out = tmp_path / "run"
    proc = start_cli("--config", str(write_config(tmp_path / "r.toml", tiny_sd1, dataset_dir, out,
                                                  max_train_steps=100000)))
    wait_for_step(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=scaled(120)) == 0
    last = read_events(out)[-1]
    assert last["event"] == "stopped"
    assert Path(last["last_checkpoint"]).is_file()
    assert (Path(last["state"]) / "train_state.json").is_file()


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_sd1, dataset_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("--config", str(write_config(tmp_path / "e.toml", tiny_sd1, empty, tmp_path / "o1")))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(empty) in result.stderr and "Traceback" not in result.stderr

    bad = write_config(tmp_path / "b.toml", tiny_sd1, dataset_dir, tmp_path / "o2", network_dim=0)
    result = cli("--config", str(bad))
    assert result.returncode == 2 and result.stderr.startswith("error: b.toml: network_dim = 0")

    result = cli("--config", str(write_config(tmp_path / "c.toml", tmp_path / "missing.safetensors", dataset_dir,
                                              tmp_path / "o3")))
    assert result.returncode == 2 and "missing.safetensors does not exist" in result.stderr


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_named(tmp_path, tiny_sd1, dataset_dir):
    broken = dataset_dir / "2_red" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "run"
    result = cli("--config", str(write_config(tmp_path / "r.toml", tiny_sd1, dataset_dir, out, max_train_steps=2)))
    assert result.returncode == 0, result.stderr
    warnings = [e["msg"] for e in read_events(out) if e["event"] == "warning"]
    assert any("broken.png" in w for w in warnings)


@pytest.mark.slow
def test_a_run_that_failed_before_saving_can_be_retried_in_the_same_folder(tmp_path, tiny_sd1, dataset_dir):
    out = tmp_path / "run"
    not_a_lora = tmp_path / "broken.safetensors"
    not_a_lora.write_bytes(b"garbage")  # passes the file checks, fails when the trainer reads it
    bad = cli("--config", str(write_config(tmp_path / "r.toml", tiny_sd1, dataset_dir, out, max_train_steps=2)),
              "--set", f"network_weights='{not_a_lora}'")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("not a readable LoRA") == 1
    assert read_events(out)[-1]["event"] == "error"
    good = cli("--config", str(tmp_path / "r.toml"))
    assert good.returncode == 0, good.stderr
    assert read_events(out)[-1]["event"] == "done"
