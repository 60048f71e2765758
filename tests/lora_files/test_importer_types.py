"""Import of LyCORIS-type files: each file that peft cannot hold, or that does not fit the run's adapters, is one
line naming the key or the module and what to do."""

from __future__ import annotations

import pytest
import torch
from lora_types import CASES, typed_pipeline
from tiny_models import build_tiny_pipeline

from training.contract.errors import UserError
from training.lora_files.export import kohya_state_dict
from training.lora_files.importer import load_kohya_into_peft
from training.models.families import FAMILIES

SD1 = FAMILIES["sd1"]
TO_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _file(key: str) -> dict[str, torch.Tensor]:
    pipe = typed_pipeline(CASES[key])
    return kohya_state_dict(pipe.unet, [pipe.text_encoder], SD1)


def _load(sd, pipe=None):
    pipe = pipe or build_tiny_pipeline("sd1")
    return load_kohya_into_peft(sd, pipe.unet, [pipe.text_encoder], SD1)


def test_tucker_locon_is_refused_by_name():
    sd = _file("locon")
    sd[f"{TO_Q}.lora_mid.weight"] = torch.zeros(4, 4, 1, 1, dtype=torch.float16)
    with pytest.raises(UserError, match=r"lora_mid.weight'.*Tucker LoCon"):
        _load(sd)


def test_a_file_that_mixes_types_is_refused():
    loha = _file("loha")
    sd = {k: v for k, v in _file("lora").items() if not k.startswith(TO_Q + ".")}
    sd.update({k: v for k, v in loha.items() if k.startswith(TO_Q + ".")})
    with pytest.raises(UserError, match="mixes module types"):
        _load(sd)


def test_dora_with_one_magnitude_per_input_is_refused():
    sd = _file("dora")
    for key in [k for k in sd if k.endswith(".dora_scale")]:
        out_shape = sd[key].shape
        sd[key] = torch.ones(1, 32 if "down_blocks_0" in key else out_shape[0], *out_shape[2:], dtype=torch.float16)
    with pytest.raises(UserError, match="one magnitude per output"):
        _load(sd)


def test_a_loha_file_cannot_resume_a_lora_run():
    run = typed_pipeline(CASES["lora"])
    with pytest.raises(UserError, match="carries no LoHa adapter"):
        _load(_file("loha"), run)


def test_a_lokr_file_of_another_factor_cannot_resume():
    """Resume keeps the run's adapters: a LoKr file whose factors were split otherwise is named, not reshaped."""
    run = typed_pipeline(CASES["lokr_decomposed"])
    with pytest.raises(UserError, match=r"the file has \['lokr_w1', 'lokr_w2'\], the model's lokr adapter has"):
        _load(_file("lokr"), run)


def test_a_dora_file_into_a_plain_lora_run_says_which_setting_to_change():
    run = typed_pipeline(CASES["locon"])
    with pytest.raises(UserError, match="set dora_wd to match the file"):
        _load(_file("dora"), run)
