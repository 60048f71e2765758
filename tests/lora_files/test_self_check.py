"""Export verifier: a good file passes; each defect the self-check looks for
(training/lora_files/self_check.py) is reported as a specific problem."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from lora_checks import export_file, lora_pipeline
from safetensors.torch import save_file
from tiny_models import build_tiny_pipeline

from training.contract.lora_check import SelfCheck
from training.lora_files.export import build_metadata, save_lora
from training.lora_files.importer import read_kohya
from training.lora_files.names import diffusers_to_sgm, module_lookup
from training.lora_files.self_check import verify_lora
from training.models.families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
TO_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
SD15_UNET = {  # public SD1.5 UNet config, used when assets/models/sd1/unet/config.json is absent
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "layers_per_block": 2,
    "attention_head_dim": 8, "sample_size": 64, "use_linear_projection": False,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def exported(request, tmp_path_factory):
    """(family, pipeline with adapters, path of a good export, its metadata)."""
    family = request.param
    pipe = lora_pipeline(family, 4, 2.0)
    path, _, _ = export_file(pipe, family, tmp_path_factory.mktemp(family) / "good.safetensors")
    return family, pipe, path, read_kohya(path)[1]


def _verify(family: str, pipe, path: Path):
    return verify_lora(path, FAMILIES[family], pipe.unet, [pipe.text_encoder])


def _write_variant(tmp_path: Path, good: Path, edit, meta_edit=None) -> Path:
    """Copy of ``good`` with tensors edited by ``edit(sd)`` and metadata by ``meta_edit(meta)``, no hash."""
    sd, meta = read_kohya(good)
    edit(sd)
    meta.pop("sshs_model_hash")
    if meta_edit:
        meta_edit(meta)
    out = tmp_path / "bad.safetensors"
    save_file(sd, str(out), metadata=meta)
    return out


def test_good_file_passes_against_peft_and_bare_model(exported):
    family, pipe, path, _ = exported
    report = _verify(family, pipe, path)
    assert report.ok, report.problems
    assert report.summary() == "60 of 60 modules matched (60 linear)" and report.expected == 60
    assert {p: (c.expected, c.matched) for p, c in report.parts.items()} == {"te": (12, 12), "unet": (48, 48)}
    bare = build_tiny_pipeline(family)
    assert _verify(family, bare, path).ok


def _rename(old: str, new: str):
    def edit(sd):
        for part in ("lora_down.weight", "lora_up.weight", "alpha"):
            sd[f"{new}.{part}"] = sd.pop(f"{old}.{part}")
    return edit


def _rename_key(old: str, new: str):
    def edit(sd):
        sd[new] = sd.pop(old)
    return edit


def _set(key: str, value):
    def edit(sd):
        sd[key] = value(sd[key]) if callable(value) else value
    return edit


def _drop(key: str):
    return lambda sd: sd.pop(key)


DEFECTS = {
    "renamed": (_rename(TO_Q, TO_Q.replace("to_q", "to_qq")), "matches no module"),
    "no_text_model": (_rename(TE_Q, TE_Q.replace("text_model_", "")), "lacks text_model_"),
    "sgm_name": (_rename(TO_Q, "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"), "diffusers naming"),
    "missing_alpha": (_drop(f"{TO_Q}.alpha"), "lacks alpha"),
    "wrong_shape": (_set(f"{TO_Q}.lora_down.weight", lambda t: t[:, :-1].contiguous()), "do not fit"),
    "lora_A_key": (_rename_key(f"{TO_Q}.lora_down.weight", f"{TO_Q}.lora_A.weight"), "not a kohya LoRA key"),
    "fp32_tensor": (_set(f"{TO_Q}.lora_up.weight", lambda t: t.float()), "policy is F16"),
    "zero_alpha": (_set(f"{TO_Q}.alpha", torch.tensor(0.0, dtype=torch.float16)), "alpha must be"),
    "nan": (_set(f"{TO_Q}.lora_up.weight", lambda t: t.clone().fill_(float("nan"))), "NaN/Inf"),
    "te1_prefix": (_rename(TE_Q, TE_Q.replace("lora_te_", "lora_te1_")), "prefix 'lora_te1'"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_defective_file_is_reported(exported, tmp_path, defect):
    family, pipe, good, _ = exported
    edit, message = DEFECTS[defect]
    report = _verify(family, pipe, _write_variant(tmp_path, good, edit))
    assert not report.ok
    assert any(message in p for p in report.problems), report.problems
    assert report.matched < report.expected or defect in ("fp32_tensor", "te1_prefix", "lora_A_key")
    assert report.missing == report.expected - report.matched
    assert sum(c.matched for c in report.parts.values()) == report.matched


def test_the_result_travels_in_a_checkpoint_event_as_data(exported, tmp_path):
    """What the loop writes into the checkpoint event reads back as the same record: numbers, per part, problems."""
    family, pipe, good, _ = exported
    report = _verify(family, pipe, _write_variant(tmp_path, good, DEFECTS["nan"][0]))
    event = {"event": "checkpoint", "check": report.summary(), "check_result": report.to_event()}
    back = SelfCheck.from_event(json.loads(json.dumps(event)))
    assert (back.expected, back.matched, back.missing, back.ok) == (60, 59, 1, False)
    assert back.parts == report.parts and back.problems == report.problems and back.summary() == event["check"]
    assert back.parts_text() == "UNet 47 of 48, text encoder 12 of 12"
    assert SelfCheck.from_event({"event": "checkpoint", "check": "60 of 60 modules matched"}) is None  # older runs


META_DEFECTS = {
    "tag_frequency_not_json": ({"ss_tag_frequency": "{not json"}, "'ss_tag_frequency' is not valid JSON"),
    "dataset_dirs_list": ({"ss_dataset_dirs": "[]"}, "must be a JSON dict"),
    "started_at": ({"ss_training_started_at": "yesterday"}, "not a number"),
    "wrong_v2": ({"ss_v2": "maybe"}, "'ss_v2'"),
    "wrong_version": ({"ss_base_model_version": "sdxl_base_v1-0"}, "'ss_base_model_version'"),
    "network_module": ({"ss_network_module": "lycoris.kohya"}, "'ss_network_module'"),
    "network_dim": ({"ss_network_dim": "128"}, "'ss_network_dim'"),
    "architecture": ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, "modelspec.architecture"),
    "hash": ({"sshs_model_hash": "0" * 64}, "does not match"),
}


@pytest.mark.parametrize("defect", sorted(META_DEFECTS))
def test_bad_metadata_is_reported(exported, tmp_path, defect):
    family, pipe, good, _ = exported
    changes, message = META_DEFECTS[defect]
    path = _write_variant(tmp_path, good, lambda sd: None, lambda meta: meta.update(changes))
    report = _verify(family, pipe, path)
    assert any(message in p for p in report.problems), report.problems
    assert report.matched == report.expected  # module checks are unaffected


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_openclip_attention_needs_all_four_projections(tmp_path, family):
    """Only OpenCLIP encoders (SD2) need q/k/v/out together; a partial CLIP-L (SD1) layer is fine."""
    pipe = lora_pipeline(family, 4, 2.0)
    path, _, _ = export_file(pipe, family, tmp_path / "good.safetensors")
    k_proj = "lora_te_text_model_encoder_layers_1_self_attn_k_proj"

    def drop(sd):
        for part in ("lora_down.weight", "lora_up.weight", "alpha"):
            sd.pop(f"{k_proj}.{part}")

    report = _verify(family, pipe, _write_variant(tmp_path, path, drop))
    flagged = any("layer 1" in p and "q/k/v/out_proj" in p for p in report.problems)
    assert flagged == (family == "sd2"), report.problems


def test_truncated_file_and_wrong_extension(exported, tmp_path):
    family, pipe, good, _ = exported
    bad = tmp_path / "lora.ckpt"
    bad.write_bytes(good.read_bytes()[:20])
    problems = _verify(family, pipe, bad).problems
    assert any("extension" in p for p in problems) and any("header" in p for p in problems)


def _sd15_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg_file = ROOT / "assets" / "models" / "sd1" / "unet" / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else SD15_UNET
    te_cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(cfg), CLIPTextModel(te_cfg)


def test_full_size_sd15_names_resolve_in_both_conventions():
    unet, te = _sd15_models()
    table = module_lookup(unet, [te], FAMILIES["sd1"])
    targets = [p for p, _ in unet.named_modules() if p.rsplit(".", 2)[-2:] in (["attn1", "to_q"], ["attn2", "to_q"])
               or p.endswith((".to_k", ".to_v", ".to_out.0"))]
    assert len(targets) == 128
    diffusers_names = ["lora_unet_" + p.replace(".", "_") for p in targets]
    sgm_names = ["lora_unet_" + diffusers_to_sgm(p, 2, {0: False, 1: True, 2: True, 3: True}).replace(".", "_")
                 for p in targets]
    assert all(table[d] == table[s] == ("unet", p) for d, s, p in zip(diffusers_names, sgm_names, targets, strict=True))
    for name in ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
                 "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0",
                 "lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_k",
                 "lora_unet_output_blocks_2_1_conv", "lora_unet_input_blocks_3_0_op",
                 "lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_output_blocks_3_0_skip_connection",
                 "lora_unet_down_blocks_1_attentions_0_proj_in", "lora_te_text_model_encoder_layers_11_mlp_fc2",
                 "lora_te_encoder_layers_0_self_attn_q_proj", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"):
        assert name in table, name
    assert table["lora_unet_output_blocks_2_1_conv"] == ("unet", "up_blocks.0.upsamplers.0.conv")


def test_verify_full_size_file_on_meta_models(tmp_path):
    """A rank-1 LoRA over every attention projection of SD1.5 checks out against meta-device models."""
    unet, te = _sd15_models()
    sd = {}
    for comp, model in (("lora_unet", unet), ("lora_te_text_model", te)):
        for path, mod in model.named_modules():
            if path.endswith(("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")):
                name = f"{comp}_{path.replace('.', '_')}"
                sd[f"{name}.lora_down.weight"] = torch.full((1, mod.in_features), 0.01, dtype=torch.float16)
                sd[f"{name}.lora_up.weight"] = torch.full((mod.out_features, 1), 0.01, dtype=torch.float16)
                sd[f"{name}.alpha"] = torch.tensor(1.0, dtype=torch.float16)
    meta = build_metadata({"network_dim": 1, "network_alpha": 1}, FAMILIES["sd1"], {})
    save_lora(tmp_path / "full.safetensors", sd, meta)
    report = verify_lora(tmp_path / "full.safetensors", FAMILIES["sd1"], unet, [te])
    assert report.ok, report.problems[:5]
    assert report.summary() == "176 of 176 modules matched (176 linear)"  # 128 UNet + 48 TE


# --- the header, the values and the metadata: each defect a loader would trip on is named

MID_TO_K = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"


def _raw_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "raw.safetensors"
    path.write_bytes(data)
    return path


def _header_only(metadata: dict[str, str]) -> bytes:
    """A valid safetensors file with no tensors: length, then a JSON header padded to 8 bytes, nothing after it."""
    header = json.dumps({"__metadata__": metadata}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def test_header_length_problems_are_told_apart(exported, tmp_path):
    family, pipe, good, _ = exported
    assert any("too short" in p for p in _verify(family, pipe, _raw_file(tmp_path, b"\0" * 7)).problems)
    eight = _verify(family, pipe, _raw_file(tmp_path, struct.pack("<Q", 0))).problems  # a length, no JSON
    assert any("does not parse" in p for p in eight) and not any("too short" in p for p in eight)
    body = good.read_bytes()
    past_the_end = struct.pack("<Q", len(body)) + body[8:]
    problems = _verify(family, pipe, _raw_file(tmp_path, past_the_end)).problems
    assert any(p == f"header length {len(body)} is invalid" for p in problems), problems
    exact = _verify(family, pipe, _raw_file(tmp_path, _header_only({"a": "b"}))).problems  # header ends the file
    assert not any("header length" in p or "does not parse" in p for p in exact), exact


def test_duplicate_header_keys_are_named(exported, tmp_path):
    """A header safetensors itself cannot read is a problem in the report, never a traceback."""
    family, pipe, _, _ = exported
    header = b'{"__metadata__": {"a": "1"}, "x": 1, "x": 2}'
    header += b" " * (-len(header) % 8)
    problems = _verify(family, pipe, _raw_file(tmp_path, struct.pack("<Q", len(header)) + header)).problems
    assert any(p.startswith("duplicate header keys: ['x']") for p in problems), problems
    assert any(p.startswith("the tensors cannot be read: ") for p in problems), problems


def test_alpha_in_an_unusual_dtype_is_named(exported, tmp_path):
    family, pipe, good, _ = exported

    def edit(sd):
        sd[f"{TO_Q}.alpha"] = sd[f"{TO_Q}.alpha"].to(torch.bfloat16)

    problems = _verify(family, pipe, _write_variant(tmp_path, good, edit)).problems
    assert f"key '{TO_Q}.alpha': alpha dtype BF16, expected F16 or F32" in problems


def test_alpha_that_disagrees_with_the_models_scale_is_named(exported, tmp_path):
    family, pipe, good, _ = exported

    def edit(sd):
        sd[f"{TO_Q}.alpha"] = sd[f"{TO_Q}.alpha"] * 1.1  # 10% off the scale the model trained with

    problems = _verify(family, pipe, _write_variant(tmp_path, good, edit)).problems
    assert any(p.startswith(f"module '{TO_Q}': alpha/r = ") for p in problems), problems


def test_an_untrained_module_is_a_warning_not_a_problem(exported, tmp_path):
    family, pipe, good, _ = exported
    assert not [w for w in _verify(family, pipe, good).warnings if "all zero" in w]

    def edit(sd):
        sd[f"{TO_Q}.lora_up.weight"] = torch.zeros_like(sd[f"{TO_Q}.lora_up.weight"])

    report = _verify(family, pipe, _write_variant(tmp_path, good, edit))
    assert f"module '{TO_Q}': lora_up is all zero (untrained)" in report.warnings


def test_network_dim_metadata_that_is_not_a_number_is_named(exported, tmp_path):
    family, pipe, good, _ = exported
    path = _write_variant(tmp_path, good, lambda sd: None, lambda meta: meta.update(ss_network_dim="sixteen"))
    problems = _verify(family, pipe, path).problems
    assert any(p.startswith("metadata 'ss_network_dim' is 'sixteen'") for p in problems), problems


@pytest.mark.parametrize("above", [0, 8])
def test_a_rank_above_the_layers_smaller_side_does_not_fit(exported, tmp_path, above):
    """The rank of a LoRA on a layer is at most its smaller side (the mid block's cross-attention key, whose input
    is the text width and output the channel width): a larger rank cannot come from training."""
    family, _, good, _ = exported
    bare = build_tiny_pipeline(family)  # no adapter: the scale is not compared, only the shapes
    layer = bare.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")
    fan_in, out = layer.in_features, layer.out_features
    assert fan_in + 8 <= out  # a layer whose sides differ, so "smaller side" is not "either side"
    rank = fan_in + above

    def edit(sd):
        sd[f"{MID_TO_K}.lora_down.weight"] = torch.full((rank, fan_in), 0.01, dtype=torch.float16)
        sd[f"{MID_TO_K}.lora_up.weight"] = torch.full((out, rank), 0.01, dtype=torch.float16)
        sd[f"{MID_TO_K}.alpha"] = torch.tensor(float(rank) * 0.5, dtype=torch.float16)

    problems = _verify(family, bare, _write_variant(tmp_path, good, edit)).problems
    shape_problems = [p for p in problems if p.startswith(f"module '{MID_TO_K}': shapes")]
    assert (shape_problems == []) == (above == 0), problems


# --- the shape rules on a conv layer (LoCon-style modules in imported files) and on a layer LoRA cannot target

def _shapes_fit(target: torch.nn.Module, down_shape: tuple[int, ...], up_shape: tuple[int, ...]) -> tuple[bool, list]:
    from training.lora_files.self_check import _check_shapes

    report = SelfCheck()
    rank = down_shape[0]
    t = {"lora_down.weight": torch.zeros(down_shape), "lora_up.weight": torch.zeros(up_shape),
         "alpha": torch.tensor(float(rank))}
    return _check_shapes("m", target, t, report), report.problems


def test_a_conv_lora_fits_with_the_kernel_on_down_and_1x1_on_up():
    conv = torch.nn.Conv2d(8, 16, 3)
    assert _shapes_fit(conv, (4, 8, 3, 3), (16, 4, 1, 1)) == (True, [])
    # the rank may reach the smaller of out (16) and in x kernel (8 x 3 x 3 = 72)
    assert _shapes_fit(conv, (16, 8, 3, 3), (16, 16, 1, 1))[0]
    for down, up in [((4, 8, 3, 3), (16, 4, 3, 3)),   # up must be 1x1
                     ((4, 8, 1, 1), (16, 4, 1, 1)),   # down must carry the kernel
                     ((4, 8, 3, 3), (16, 4)),         # up must be 4-dim like the layer
                     ((17, 8, 3, 3), (16, 17, 1, 1))]:  # rank above out
        fits, problems = _shapes_fit(conv, down, up)
        assert not fits and problems and problems[0].startswith("module 'm': shapes"), (down, up)


def test_a_layer_lora_cannot_target_is_named():
    fits, problems = _shapes_fit(torch.nn.LayerNorm(8), (4, 8), (8, 4))
    assert not fits and problems == ["module 'm': target is LayerNorm, not Linear/Conv2d"]
