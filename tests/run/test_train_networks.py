"""Every network type trains end to end through the real CLI on the tiny SD1 model: steps, validation, a sample, a
checked save, and a second run that starts from the saved file (network_weights) exactly where the first ended."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open
from test_train_cli import cli, write_config

from training.contract.events import read_events
from training.contract.network import LYCORIS

# a tensor suffix only the asked type's file holds (LoCon: 3x3 conv modules, checked below)
MARKERS = {"LoCon": ".lora_down.weight", "LoHa": ".hada_w1_a", "LoKr": ".lokr_w1", "LoCon+DoRA": ".dora_scale"}

NETWORKS = {
    "LoCon": {"conv_dim": 2, "conv_alpha": 1.0, "network_dropout": 0.1},
    "LoHa": {"network_module": LYCORIS, "network_args": ["algo=loha", "preset=full", "conv_dim=2",
                                                          "rank_dropout=0.1"]},
    "LoKr": {"network_module": LYCORIS, "network_args": ["algo=lokr", "factor=4", "preset=attn-mlp"]},
    "LoCon+DoRA": {"network_module": LYCORIS, "network_args": ["algo=locon", "dora_wd=True",
                                                                "preset=unet-transformer-only"]},
}


def val_losses(out: Path) -> list[float]:
    return [e["loss"] for e in read_events(out) if e["event"] == "val"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NETWORKS))
def test_each_network_type_trains_saves_samples_and_continues(tmp_path, tiny_sd1, dataset_dir, kind):
    network = NETWORKS[kind] | {"save_precision": "float"}
    first = tmp_path / "first"
    config = write_config(tmp_path / "first.toml", tiny_sd1, dataset_dir, first, max_train_steps=4,
                          validation_every_n_steps=4, sample_prompts="red, circle", sample_every_n_steps=4,
                          **network)
    result = cli("--config", str(config))
    assert result.returncode == 0, result.stderr
    events = read_events(first)
    assert events[-1]["event"] == "done"
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert val_losses(first)
    sample = next(e for e in events if e["event"] == "sample")
    assert all(Path(p).is_file() for p in sample["paths"])
    checkpoint = next(e for e in events if e["event"] == "checkpoint")
    matched, _, total = checkpoint["check"].split()[:3]
    assert matched == total and int(total) > 0
    with safe_open(str(first / "lora.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    assert any(k.endswith(MARKERS[kind]) for k in shapes), f"the file is not a {kind}"
    if kind == "LoCon":  # the resnets' 3x3 convs at conv_dim 2
        assert any(k.endswith("_conv1.lora_down.weight") and v[1:] == [32, 3, 3] and v[0] == 2
                   for k, v in shapes.items())

    # network_weights: the same network continues from the file, with the validation loss it ended on.
    second = tmp_path / "second"
    config = write_config(tmp_path / "second.toml", tiny_sd1, dataset_dir, second, max_train_steps=1,
                          validation_every_n_steps=1, network_weights=str(first / "lora.safetensors"), **network)
    result = cli("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert val_losses(second)[0] == pytest.approx(val_losses(first)[-1], rel=1e-4)
