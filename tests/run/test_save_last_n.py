"""save_last_n_epochs(_state), save_last_n_steps, save_state_on_train_end and scale_weight_norms in tiny in-process
runs: which files a run leaves, and the module norms of the file it exports."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_models import make_image_dataset

from training.contract.config import TrainConfig
from training.contract.config_io import ConfigError, load_config
from training.contract.events import read_events
from training.run.checkpoints import old_saves
from training.run.runner import run


def config(model: Path, data: Path, out: Path, **extra) -> TrainConfig:
    values = {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "output_name": "mylora", "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128,
        "network_dim": 4, "network_alpha": 4.0, "learning_rate": 1e-2, "lr_scheduler": "constant",
        "mixed_precision": "no", "seed": 3, "network_train_unet_only": True, "validation_every_n_steps": 0,
        "save_precision": "float",
    } | extra
    return TrainConfig(**values)


def saves(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("mylora"))


def module_norms(path: Path) -> list[float]:
    """||up @ down|| * alpha / rank of every module of a kohya LoRA file, computed from its tensors."""
    tensors = load_file(str(path))
    norms = []
    for key in tensors:
        if key.endswith(".lora_down.weight"):
            name = key.removesuffix(".lora_down.weight")
            down, up = tensors[key].float(), tensors[f"{name}.lora_up.weight"].float()
            scale = float(tensors[f"{name}.alpha"]) / down.shape[0]
            norms.append(float((up.flatten(1) @ down.flatten(1)).norm()) * scale)
    return norms


def test_save_last_n_epochs_keeps_that_many_and_max_norm_holds_every_module(tmp_path, tiny_sd1):
    """4 epochs of 1 step, a save after each but the last: epochs 1-3 are saved, the newest two LoRAs stay
    (kohya removes epoch e - 1 x 2 at epoch e) and the newest state; the final LoRA and state always stay.
    scale_weight_norms: every module's norm in the exported file is at or below the limit, and the step events
    say how many modules were scaled."""
    data = make_image_dataset(tmp_path / "data", {"1_red": 1})
    out, limit = tmp_path / "run", 0.02
    cfg = config(tiny_sd1, data, out, max_train_epochs=4, save_every_n_epochs=1, save_last_n_epochs=2,
                 save_state=True, save_last_n_epochs_state=1, scale_weight_norms=limit)
    assert run(cfg) == "done"
    assert saves(out) == ["mylora-000002.safetensors", "mylora-000003-state", "mylora-000003.safetensors",
                          "mylora-state", "mylora.safetensors"]

    norms = module_norms(out / "mylora.safetensors")
    assert norms and max(norms) <= limit * (1 + 1e-4)
    assert max(norms) > limit * 0.99  # the limit was reached: the check above is not trivially true
    steps = [e for e in read_events(out) if e["event"] == "step"]
    assert len(steps) == 4 and all(e["keys_scaled"] is not None for e in steps)
    assert sum(e["keys_scaled"] for e in steps) > 0 and max(e["max_key_norm"] for e in steps) <= limit * (1 + 1e-4)
    assert all(e["average_key_norm"] <= e["max_key_norm"] for e in steps)


def test_save_last_n_steps_and_the_state_at_the_end(tmp_path, tiny_sd1):
    """Saves every step of 5 (1 to 4; the final replaces 5); save_last_n_steps = 2 keeps the saves of the last 2
    steps, so step 1 goes at step 4. save_state_on_train_end writes only the final state."""
    data = make_image_dataset(tmp_path / "data", {"1_red": 1})
    out = tmp_path / "run"
    cfg = config(tiny_sd1, data, out, max_train_steps=5, save_every_n_steps=1, save_last_n_steps=2,
                 save_state_on_train_end=True)
    assert run(cfg) == "done"
    assert saves(out) == ["mylora-state", "mylora-step00000002.safetensors", "mylora-step00000003.safetensors",
                          "mylora-step00000004.safetensors", "mylora.safetensors"]


@pytest.mark.parametrize(("every", "last", "step", "removed"), [
    (10, 30, 50, [10]), (10, 30, 40, []), (10, 25, 50, [10, 20]), (1, 1, 5, [1, 2, 3])])
def test_step_saves_are_removed_by_kohyas_arithmetic(tmp_path, every, last, step, removed):
    """kohya: after the save at step s, the saves up to s - N - 1 (on the save_every_n_steps grid) go."""
    for n in range(every, step + 1, every):
        (tmp_path / f"mylora-step{n:08d}.safetensors").write_bytes(b"")
    (tmp_path / "mylora-step00000007.safetensors").write_bytes(b"")  # a save the user asked for: kept
    (tmp_path / "mylora.safetensors").write_bytes(b"")
    cfg = TrainConfig(output_name="mylora", save_every_n_steps=every, save_last_n_steps=last,
                      save_last_n_steps_state=1)
    got = old_saves(tmp_path, cfg, f"mylora-step{step:08d}", step, 0)
    assert [p.name for p in got] == [f"mylora-step{n:08d}.safetensors" for n in removed]


@pytest.mark.parametrize("value", ["ckpt", "pt", "diffusers"])
def test_save_model_as_other_than_safetensors_is_refused_in_one_line(tmp_path, value):
    path = tmp_path / "kohya.toml"
    path.write_text(f'save_model_as = "{value}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "save_model_as" in message and "safetensors only" in message and "\n" not in message
    path.write_text('save_model_as = "safetensors"\n')
    assert load_config(path)[0].save_model_as == "safetensors"
