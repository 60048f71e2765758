"""kohya -> peft import: lookup-based name resolution, exact round trips, both UNet conventions, both TE forms."""

from __future__ import annotations

import re

import pytest
import torch
from lora_checks import CASE_IDS, CASES, export_file, lora_pipeline, text_encoders
from tiny_models import build_tiny_pipeline

from training.contract.errors import UserError
from training.lora_files.export import kohya_state_dict
from training.lora_files.importer import load_kohya_into_peft, read_kohya
from training.models.families import FAMILIES
from training.networks.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora


def _reexport(sd: dict[str, torch.Tensor], family: str) -> tuple[dict[str, torch.Tensor], object]:
    fresh = build_tiny_pipeline(family, seed=7)  # different base weights: only the LoRA tensors matter
    report = load_kohya_into_peft(sd, fresh.unet, text_encoders(fresh), FAMILIES[family])
    return kohya_state_dict(fresh.unet, text_encoders(fresh), FAMILIES[family]), report


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def _to_sgm(name: str) -> str:
    """Independent diffusers -> SGM renaming for the tiny UNet's attention modules (layers_per_block 2)."""
    def down(m: re.Match) -> str:
        return f"lora_unet_input_blocks_{1 + 3 * int(m[1]) + int(m[2])}_1_"

    def up(m: re.Match) -> str:
        return f"lora_unet_output_blocks_{3 * int(m[1]) + int(m[2])}_1_"

    name = re.sub(r"^lora_unet_down_blocks_(\d+)_attentions_(\d+)_", down, name)
    name = re.sub(r"^lora_unet_up_blocks_(\d+)_attentions_(\d+)_", up, name)
    return re.sub(r"^lora_unet_mid_block_attentions_0_", "lora_unet_middle_block_1_", name)


def _rename(sd: dict[str, torch.Tensor], fn) -> dict[str, torch.Tensor]:
    out = {}
    for key, t in sd.items():
        name, _, part = key.partition(".")
        out[f"{fn(name)}.{part}"] = t
    return out


@pytest.mark.parametrize(("family", "rank", "alpha", "extra"), CASES, ids=CASE_IDS)
def test_round_trip_is_exact(tmp_path, family, rank, alpha, extra):
    path, sd, _ = export_file(lora_pipeline(family, rank, alpha, extra), family, tmp_path / "a.safetensors")
    file_sd, meta = read_kohya(path)
    assert meta["ss_network_module"] == "networks.lora"
    again, report = _reexport(file_sd, family)
    _assert_identical(file_sd, again)
    components = {"unet", "text_encoder_0"} | ({"text_encoder_1"} if family == "sdxl" else set())
    assert report.modules == len(sd) // 3 and set(report.injected) == components


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_sgm_named_file_reexports_in_diffusers_naming(family):
    sd = kohya_state_dict(*_models(lora_pipeline(family, 4, 2.0)), FAMILIES[family])
    sgm = _rename(sd, _to_sgm)
    assert any("input_blocks_1_1_transformer_blocks_0_attn1_to_q" in k for k in sgm)
    assert any("middle_block_1_" in k for k in sgm) and any("output_blocks_5_1_" in k for k in sgm)
    again, report = _reexport(sgm, family)
    assert report.conventions == {"sgm"}
    _assert_identical(sd, again)


def _models(pipe):
    return pipe.unet, [pipe.text_encoder]


def test_bare_te_names_and_lora_te1_are_accepted():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    bare = _rename(sd, lambda n: n.replace("lora_te_text_model_", "lora_te_"))
    te1 = _rename(sd, lambda n: n.replace("lora_te_", "lora_te1_"))
    for variant in (bare, te1):
        again, _ = _reexport(variant, "sd1")
        _assert_identical(sd, again)


def test_unknown_module_name_is_an_error():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    sd = _rename(sd, lambda n: n.replace("attn1_to_q", "attn1_to_qq"))
    with pytest.raises(UserError, match="attn1_to_qq"):
        _reexport(sd, "sd1")


def test_sd2_file_on_sd1_model_is_an_error():
    """SD2's linear proj_in LoRA is 2-D; different families disagree on names or shapes, never silently load."""
    sd = kohya_state_dict(*_models(lora_pipeline("sd2", 4, 2.0, ("proj_in",))), FAMILIES["sd2"])
    with pytest.raises(UserError, match="shape"):
        _reexport(sd, "sd1")


def test_missing_alpha_means_scale_one():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    no_alpha = {k: v for k, v in sd.items() if not k.endswith(".alpha")}
    fresh = build_tiny_pipeline("sd1")
    report = load_kohya_into_peft(no_alpha, fresh.unet, [fresh.text_encoder], FAMILIES["sd1"])
    assert report.missing_alpha == len(sd) // 3
    layer = fresh.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.scaling["default"] == 1.0


def test_heterogeneous_ranks_and_alphas_use_patterns():
    sd = kohya_state_dict(*_models(lora_pipeline("sd2", 4, 2.0)), FAMILIES["sd2"])
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    sd[f"{name}.lora_down.weight"] = sd[f"{name}.lora_down.weight"][:2].clone()
    sd[f"{name}.lora_up.weight"] = sd[f"{name}.lora_up.weight"][:, :2].clone()
    sd[f"{name}.alpha"] = torch.tensor(3.0, dtype=torch.float16)
    te = "lora_te_text_model_encoder_layers_1_self_attn_v_proj.alpha"
    sd[te] = torch.tensor(0.5, dtype=torch.float16)
    again, _ = _reexport(sd, "sd2")
    _assert_identical(sd, again)


def test_copy_into_existing_adapter_for_resume():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    fresh = build_tiny_pipeline("sd1")
    add_lora(fresh.unet, UNET_TARGETS, 4, 2.0)
    add_lora(fresh.text_encoder, TEXT_ENCODER_TARGETS, 4, 2.0)
    report = load_kohya_into_peft(sd, fresh.unet, [fresh.text_encoder], FAMILIES["sd1"])
    assert report.injected == [] and report.untouched == []
    _assert_identical(sd, kohya_state_dict(fresh.unet, [fresh.text_encoder], FAMILIES["sd1"]))
    assert fresh.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_v").lora_A[
        "default"].weight.dtype == torch.float32


def test_rank_mismatch_with_existing_adapter_is_an_error():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    fresh = build_tiny_pipeline("sd1")
    add_lora(fresh.unet, UNET_TARGETS, 8, 2.0)
    with pytest.raises(UserError, match="rank mismatch"):
        load_kohya_into_peft(sd, fresh.unet, [fresh.text_encoder], FAMILIES["sd1"])


def test_foreign_keys_are_an_error():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    key = next(iter(sd)).partition(".")[0] + ".dora_scale"
    with pytest.raises(UserError, match="dora_scale"):
        _reexport({**sd, key: torch.ones(1)}, "sd1")


@pytest.mark.parametrize("part", ["lora_down.weight", "lora_up.weight"])
def test_a_module_missing_half_its_pair_is_an_error(part):
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    name = next(iter(sd)).partition(".")[0]
    del sd[f"{name}.{part}"]
    with pytest.raises(UserError, match=f"lacks {re.escape(part)}$"):
        _reexport(sd, "sd1")


def test_resuming_with_a_file_that_covers_more_modules_than_the_model_is_an_error():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0, ("proj_in",))), FAMILIES["sd1"])
    fresh = build_tiny_pipeline("sd1")
    add_lora(fresh.unet, UNET_TARGETS, 4, 2.0)
    add_lora(fresh.text_encoder, TEXT_ENCODER_TARGETS, 4, 2.0)
    with pytest.raises(UserError, match="carries no LoRA adapter"):
        load_kohya_into_peft(sd, fresh.unet, [fresh.text_encoder], FAMILIES["sd1"])


def test_resuming_with_a_module_of_another_width_is_an_error():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    up = next(k for k in sd if k.endswith("lora_up.weight"))
    sd[up] = torch.zeros(sd[up].shape[0] + 1, *sd[up].shape[1:], dtype=sd[up].dtype)
    fresh = build_tiny_pipeline("sd1")
    add_lora(fresh.unet, UNET_TARGETS, 4, 2.0)
    add_lora(fresh.text_encoder, TEXT_ENCODER_TARGETS, 4, 2.0)
    with pytest.raises(UserError, match="shape mismatch"):
        load_kohya_into_peft(sd, fresh.unet, [fresh.text_encoder], FAMILIES["sd1"])


def test_resume_reports_the_adapter_layers_the_file_leaves_untouched():
    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v"
    partial = {k: v for k, v in sd.items() if not k.startswith(name + ".")}
    fresh = build_tiny_pipeline("sd1")
    add_lora(fresh.unet, UNET_TARGETS, 4, 2.0)
    add_lora(fresh.text_encoder, TEXT_ENCODER_TARGETS, 4, 2.0)
    report = load_kohya_into_peft(partial, fresh.unet, [fresh.text_encoder], FAMILIES["sd1"])
    assert report.untouched == ["unet:mid_block.attentions.0.transformer_blocks.0.attn1.to_v"]


def test_a_file_path_loads_like_its_tensors(tmp_path):
    from safetensors.torch import save_file

    sd = kohya_state_dict(*_models(lora_pipeline("sd1", 4, 2.0)), FAMILIES["sd1"])
    save_file(sd, str(tmp_path / "lora.safetensors"), metadata={"ss_network_dim": "4"})
    fresh = build_tiny_pipeline("sd1")
    report = load_kohya_into_peft(tmp_path / "lora.safetensors", fresh.unet, [fresh.text_encoder], FAMILIES["sd1"])
    assert report.modules == len(sd) // 3
    _assert_identical(sd, kohya_state_dict(fresh.unet, [fresh.text_encoder], FAMILIES["sd1"]))
