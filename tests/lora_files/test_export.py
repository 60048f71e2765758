"""peft -> kohya export: names, dtypes, scale, atomic save, hash, and that diffusers applies every module.

The diffusers check covers SD1, SD2 and SDXL (UNet + TE1 + TE2); SDXL's own names and metadata: test_sdxl_lora.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct

import pytest
import torch
from lora_checks import CASE_IDS, CASES, SD_CASES, apply_with_diffusers, case_ids, export_file, lora_pipeline
from tiny_models import build_tiny_pipeline

from training.contract.errors import UserError
from training.lora_files.export import LoraMetadata, build_metadata, kohya_state_dict, parse_resolution, save_lora
from training.models.families import FAMILIES
from training.networks.lora import UNET_TARGETS


def _generate(pipe) -> torch.Tensor:
    out = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="latent",
               generator=torch.Generator().manual_seed(0), guidance_scale=1.0)
    return out.images


@pytest.mark.parametrize(("family", "rank", "alpha", "extra"), CASES, ids=CASE_IDS)
def test_diffusers_applies_every_module_at_the_right_scale(tmp_path, family, rank, alpha, extra):
    peft_pipe = lora_pipeline(family, rank, alpha, extra)
    path, _, _ = export_file(peft_pipe, family, tmp_path / "lora.safetensors")
    fresh = build_tiny_pipeline(family)  # same seed -> same base weights as peft_pipe
    changed, expected, worst, lines = apply_with_diffusers(fresh, path, family, rank=rank, alpha=alpha)
    assert not [ln for ln in lines if "No LoRA keys" in ln or "unexpected" in ln.lower()], lines
    assert changed == expected
    components = {"unet", "te0"} | ({"te1"} if family == "sdxl" else set())  # SDXL: UNet, TE1 and TE2 all fused
    assert {k.partition(".")[0] for k in changed} == components
    assert worst <= 2e-3

    assert not torch.allclose(_generate(peft_pipe), _generate(build_tiny_pipeline(family)), atol=1e-3)
    torch.testing.assert_close(_generate(fresh), _generate(peft_pipe), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(("family", "rank", "alpha", "extra"), SD_CASES, ids=case_ids(SD_CASES))
def test_key_names_dtypes_and_alpha(family, rank, alpha, extra):
    pipe = lora_pipeline(family, rank, alpha, extra)
    sd = kohya_state_dict(pipe.unet, [pipe.text_encoder], FAMILIES[family])
    names = {k.partition(".")[0] for k in sd}
    assert len(sd) == 3 * len(names)
    te = [n for n in names if n.startswith("lora_te_")]
    unet = [n for n in names if n.startswith("lora_unet_")]
    assert len(te) == 3 * 4 and len(te) + len(unet) == len(names)
    assert all("_text_model_encoder_layers_" in n for n in te)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in unet
    assert "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0" in unet
    assert not [n for n in unet if "input_blocks" in n or "output_blocks" in n or "middle_block" in n]
    for key, t in sd.items():
        assert t.dtype == torch.float16 and t.is_contiguous(), key
        if key.endswith(".alpha"):
            assert t.ndim == 0 and float(t) == alpha
    if "proj_in" in extra and family == "sd1":  # SD1 proj_in is a 1x1 conv: 4-D LoRA
        down = sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
        assert down.shape == (rank, 32, 1, 1)
        assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (rank, 32, 3, 3)


def test_alpha_is_scaling_times_rank_for_rslora():
    from peft import LoraConfig, inject_adapter_in_model

    pipe = build_tiny_pipeline("sd1")
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, use_rslora=True, target_modules=UNET_TARGETS), pipe.unet)
    sd = kohya_state_dict(pipe.unet, [], FAMILIES["sd1"])
    assert {float(t) for k, t in sd.items() if k.endswith(".alpha")} == {8.0}  # 4/sqrt(4) * 4


def test_hash_is_sha256_of_data_region_and_write_is_atomic(tmp_path):
    path, _, digest = export_file(lora_pipeline("sd1", 4, 2.0), "sd1", tmp_path / "out" / "lora.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert digest == hashlib.sha256(raw[8 + n:]).hexdigest()
    assert json.loads(raw[8:8 + n])["__metadata__"]["sshs_model_hash"] == digest
    assert os.listdir(path.parent) == ["lora.safetensors"]


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    sd = {"lora_te_x.alpha": torch.tensor(1.0, dtype=torch.float16)}

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_lora(tmp_path / "lora.safetensors", sd, {})
    assert os.listdir(tmp_path) == []


def test_saved_metadata_keeps_every_entry_and_a_fresh_hash(tmp_path):
    sd = {"lora_te_x.alpha": torch.tensor(1.0, dtype=torch.float16)}
    digest = save_lora(tmp_path / "lora.safetensors", sd, {"ss_output_name": "x", "sshs_model_hash": "stale"})
    raw = (tmp_path / "lora.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8:8 + n])["__metadata__"] == {"ss_output_name": "x", "sshs_model_hash": digest}
    assert digest == hashlib.sha256(raw[8 + n:]).hexdigest()


def test_metadata_values_must_be_strings(tmp_path):
    sd = {"lora_te_x.alpha": torch.tensor(1.0, dtype=torch.float16)}
    with pytest.raises(TypeError, match="metadata values must be strings"):
        save_lora(tmp_path / "lora.safetensors", sd, {"ss_network_dim": 8})


def test_lora_bias_adapters_are_refused_with_a_reason():
    from peft import LoraConfig, inject_adapter_in_model

    pipe = build_tiny_pipeline("sd1")
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, lora_bias=True, target_modules=UNET_TARGETS), pipe.unet)
    with pytest.raises(UserError, match="lora_bias"):
        kohya_state_dict(pipe.unet, [], FAMILIES["sd1"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_refused(tmp_path, bad):
    pipe = lora_pipeline("sd1", 4, 2.0)
    sd = kohya_state_dict(pipe.unet, [pipe.text_encoder], FAMILIES["sd1"])
    key = next(k for k in sd if k.endswith("lora_up.weight"))
    sd[key] = sd[key].clone()
    sd[key][0, 0] = bad
    with pytest.raises(UserError, match="NaN/Inf"):
        save_lora(tmp_path / "lora.safetensors", sd, {})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("value", "expected"), [
    (None, (768, 768)), (512, (512, 512)), ("512", (512, 512)), ("768,512", (768, 512)), ("(640, 384)", (640, 384)),
    ("1024x768", (1024, 768)), ([640, 384], (640, 384)), ((896,), (896, 896)),
])
def test_resolution_is_read_in_every_form_kohya_writes(value, expected):
    assert parse_resolution(value, 768) == expected


def test_metadata_strings_and_family_keys():
    config = {"network_dim": 8, "network_alpha": 4, "resolution": "768,512", "clip_skip": 2, "optimizer_type":
              "AdamW8bit", "train_batch_size": 3, "gradient_accumulation_steps": 2, "flip_aug": False,
              "network_args": {"conv_dim": 8}, "pretrained_model_name_or_path": "/models/v2-1_768.safetensors"}
    training = {"bucket_info": {"buckets": {}, "mean_img_ar_error": 0.0}, "steps": 10, "training_finished_at": 1.7e9}
    meta = build_metadata(config, FAMILIES["sd2-v"], training)
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "8"
    assert meta["ss_optimizer"] == "AdamW8bit" and meta["ss_total_batch_size"] == "6"
    assert meta["ss_flip_aug"] == "False" and meta["ss_resolution"] == "(768, 512)"
    assert meta["ss_sd_model_name"] == "v2-1_768.safetensors" and meta["ss_steps"] == "10"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4"}  # conv_alpha: network_alpha
    assert json.loads(meta["ss_bucket_info"])["buckets"] == {}
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v" and meta["modelspec.resolution"] == "768x512"
    assert meta["modelspec.encoder_layer"] == "2" and meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.implementation"] == "diffusers"
    assert json.loads(meta["loraforge_config"])["optimizer_type"] == "AdamW8bit"


def test_metadata_is_one_record_rendered_once_with_the_run_s_values_where_it_measured_them():
    config = {"network_dim": 8, "network_alpha": 4, "mixed_precision": "fp16", "unet_lr": 1e-4, "train_batch_size": 2,
              "gradient_accumulation_steps": 2, "max_train_steps": 100, "output_name": "x"}
    facts = {"mixed_precision": "bf16", "unet_lr": 5e-4, "total_batch_size": 8, "max_train_steps": 90,
             "network_dim": 99, "session_id": 7, "training_finished_at": 1.7e9}
    record = LoraMetadata.build(config, FAMILIES["sd1"], facts)
    groups = [record.training_entries(), record.network.render(), record.modelspec()]
    assert sum(map(len, groups)) == len(set().union(*groups))  # no key comes from two places
    meta = record.render()
    assert meta == build_metadata(config, FAMILIES["sd1"], facts)
    assert (meta["ss_mixed_precision"], meta["ss_unet_lr"], meta["ss_total_batch_size"]) == ("bf16", "0.0005", "8")
    assert (meta["ss_max_train_steps"], meta["ss_session_id"], meta["ss_batch_size_per_device"]) == ("90", "7", "2")
    assert meta["ss_network_dim"] == "8"  # the network's facts are the file's, never a run fact's


def test_network_metadata_states_the_file_s_most_common_rank_and_alpha():
    def module(name: str, rank: int, alpha: float) -> dict[str, torch.Tensor]:
        return {f"{name}.lora_down.weight": torch.zeros(rank, 32), f"{name}.lora_up.weight": torch.zeros(16, rank),
                f"{name}.alpha": torch.tensor(alpha)}

    sd = module("lora_unet_a", 4, 2.0) | module("lora_unet_b", 4, 2.0) | module("lora_unet_c", 2, 1.0)
    meta = build_metadata({"network_dim": 8, "network_alpha": 4}, FAMILIES["sd1"], {}, state_dict=sd)
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")


def test_network_metadata_without_a_file_uses_the_config_or_kohyas_defaults():
    meta = build_metadata({"network_dim": 8, "network_alpha": 4}, FAMILIES["sd1"], {})
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("8", "4")
    meta = build_metadata({"network_alpha": None, "train_batch_size": 3}, FAMILIES["sd1"], {})
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "1.0")
    assert meta["ss_total_batch_size"] == "3"  # no gradient accumulation stated: one batch per step


def test_title_comes_from_the_run_then_the_config_then_the_output_name():
    family = FAMILIES["sd1"]
    assert build_metadata({"output_name": "x"}, family, {})["modelspec.title"] == "x"
    assert build_metadata({"output_name": "x", "title": "t"}, family, {})["modelspec.title"] == "t"
    assert build_metadata({"output_name": "x", "title": "t"}, family, {"title": "run"})["modelspec.title"] == "run"


def test_a_run_without_a_session_id_gets_a_random_32_bit_one():
    ids = {int(build_metadata({}, FAMILIES["sd1"], {})["ss_session_id"]) for _ in range(50)}
    assert len(ids) > 45 and max(ids) < 2**32


def test_modelspec_date_is_when_training_finished_to_the_second():
    meta = build_metadata({}, FAMILIES["sd1"], {"training_finished_at": 1.7e9 + 0.25})
    assert meta["modelspec.date"] == dt.datetime.fromtimestamp(1_700_000_000).isoformat()
