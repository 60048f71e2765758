"""A network peft cannot build is refused before any model loads, in one line; the network's notes become
warnings at the start of the run."""

from __future__ import annotations

import pytest
from tiny_models import make_image_dataset

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.contract.network import LYCORIS
from training.plan.preflight import advice, preflight


def runnable(tmp_path, **settings) -> TrainConfig:
    model = tmp_path / "model"
    model.mkdir()
    return TrainConfig(pretrained_model_name_or_path=str(model), train_data_dir=str(make_image_dataset(tmp_path / "d")),
                       output_dir=str(tmp_path / "out"), **settings)


def test_tucker_locon_is_refused_before_the_model_loads(tmp_path):
    cfg = runnable(tmp_path, network_module=LYCORIS, network_args=["algo=locon", "use_tucker=True"])
    with pytest.raises(UserError) as err:
        preflight(cfg)
    assert "use_tucker" in str(err.value) and "algo=loha" in str(err.value) and "\n" not in str(err.value)


def test_a_runnable_network_passes_and_its_notes_are_warnings(tmp_path):
    cfg = runnable(tmp_path, network_module=LYCORIS, network_args=["algo=loha", "preset=attn-only"], conv_dim=8)
    preflight(cfg)
    notes = dict(advice(cfg))
    assert "conv_dim=8 has no effect" in notes["network_args"]
