"""SDXL LoRA in kohya form on a tiny SDXL pipeline (UNet with a depth-2 level, CLIP-L-like TE1, OpenCLIP-like TE2):
SGM UNet names and lora_te1/lora_te2 with all four attention projections, SDXL metadata, the export self-check, and the
import back into peft from both UNet naming styles. That diffusers' StableDiffusionXLPipeline applies every module of
the export (fused weight = W + alpha/r·up·down for UNet, TE1 and TE2) is checked with SD1/SD2 in test_export.py.
"""

from __future__ import annotations

import pytest
import torch
from lora_checks import SDXL_CASES, case_ids, export_file, lora_pipeline, text_encoders
from safetensors.torch import save_file
from tiny_models import build_tiny_pipeline

from training.lora_files.export import SGM_IMPLEMENTATION, kohya_state_dict
from training.lora_files.importer import load_kohya_into_peft, read_kohya
from training.lora_files.self_check import verify_lora
from training.models.families import SDXL
from training.networks.lora import ADAPTER

# Where the tiny UNet's transformers sit in the SGM layout (layers_per_block 2; only level 1 has attention, depth 2).
SGM_ATTENTION_BLOCKS = ("input_blocks_4_1", "input_blocks_5_1", "middle_block_1", "output_blocks_0_1",
                        "output_blocks_1_1", "output_blocks_2_1")
UNET_LEAVES = ("to_q", "to_k", "to_v", "to_out_0")
TE_LEAVES = ("q_proj", "k_proj", "v_proj", "out_proj")


@pytest.fixture(scope="module", params=SDXL_CASES, ids=case_ids(SDXL_CASES))
def xl_lora(request, tmp_path_factory):
    """(case, pipeline with adapters, exported file, its state dict)."""
    family, rank, alpha, extra = request.param
    pipe = lora_pipeline(family, rank, alpha, extra)
    path, sd, _ = export_file(pipe, family, tmp_path_factory.mktemp("xl") / "xl.safetensors")
    return request.param, pipe, path, sd


def _names(sd: dict) -> set[str]:
    return {k.partition(".")[0] for k in sd}


def _te_names(prefix: str) -> set[str]:
    return {f"{prefix}_text_model_encoder_layers_{i}_self_attn_{leaf}" for i in range(3) for leaf in TE_LEAVES}


def test_names_are_sgm_unet_and_te1_te2_with_all_projections(xl_lora):
    (_, rank, alpha, extra), _, _, sd = xl_lora
    names = _names(sd)
    unet_attention = {f"lora_unet_{block}_transformer_blocks_{t}_{attn}_{leaf}" for block in SGM_ATTENTION_BLOCKS
                      for t in (0, 1) for attn in ("attn1", "attn2") for leaf in UNET_LEAVES}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q" in unet_attention
    unet = {n for n in names if n.startswith("lora_unet_")}
    assert unet_attention <= unet and len(unet_attention) == 96
    assert not [n for n in unet if "down_blocks" in n or "up_blocks" in n or "mid_block" in n]
    assert names - unet == _te_names("lora_te1") | _te_names("lora_te2")
    if extra:  # resnet convs, samplers and linear proj_in/out, all SGM-named
        for name in ("lora_unet_input_blocks_3_0_op", "lora_unet_output_blocks_2_2_conv",
                     "lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_middle_block_2_out_layers_3",
                     "lora_unet_output_blocks_3_0_out_layers_3", "lora_unet_input_blocks_4_1_proj_in"):
            assert name in unet, name
        assert sd["lora_unet_input_blocks_3_0_op.lora_down.weight"].shape == (rank, 32, 3, 3)
        assert sd["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"].shape == (rank, 64)  # linear: 2-D
    else:
        assert unet == unet_attention
    assert sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape == (rank, 32)
    assert sd["lora_te2_text_model_encoder_layers_2_self_attn_out_proj.lora_up.weight"].shape == (48, rank)
    assert sd["lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k.lora_down.weight"].shape == (rank, 80)
    for key, t in sd.items():
        assert t.dtype == torch.float16 and t.is_contiguous(), key
        if key.endswith(".alpha"):
            assert float(t) == alpha


def test_metadata_marks_the_file_as_sdxl(xl_lora):
    meta = read_kohya(xl_lora[2])[1]
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == SGM_IMPLEMENTATION == "https://github.com/Stability-AI/generative-models"


def test_export_self_check_matches_every_module(xl_lora):
    _, pipe, path, sd = xl_lora
    report = verify_lora(path, SDXL, pipe.unet, text_encoders(pipe))
    assert report.ok, report.problems
    n = len(sd) // 3
    conv = sum(1 for k, t in sd.items() if k.endswith(".lora_down.weight") and t.ndim == 4)
    kinds = f"{n - conv} linear, {conv} conv" if conv else f"{n} linear"
    assert report.summary() == f"{n} of {n} modules matched ({kinds})"
    bare = build_tiny_pipeline("sdxl")
    assert verify_lora(path, SDXL, bare.unet, text_encoders(bare)).ok


# --- import back into peft: SGM and diffusers-style UNet names -------------------------------------------------------

def _diffusers_named(pipe, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same LoRA with diffusers-style UNet names, written straight from the peft layers' module paths (no use of
    our SGM table), TE entries as exported."""
    from peft.tuners.lora import LoraLayer

    out = {k: v for k, v in sd.items() if k.startswith("lora_te")}
    for path, layer in pipe.unet.named_modules():
        if isinstance(layer, LoraLayer):
            name = "lora_unet_" + path.replace(".", "_")
            out[f"{name}.lora_down.weight"] = layer.lora_A[ADAPTER].weight.detach().half().contiguous()
            out[f"{name}.lora_up.weight"] = layer.lora_B[ADAPTER].weight.detach().half().contiguous()
            out[f"{name}.alpha"] = torch.tensor(layer.scaling[ADAPTER] * layer.r[ADAPTER], dtype=torch.float16)
    return out


def _import(sd: dict[str, torch.Tensor]):
    fresh = build_tiny_pipeline("sdxl", seed=7)  # other base weights than the exported pipeline
    return fresh, load_kohya_into_peft(sd, fresh.unet, text_encoders(fresh), SDXL)


def _unet_out(pipe) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    sample, context = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 80, generator=gen)
    cond = {"text_embeds": torch.randn(2, 24, generator=gen), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        return pipe.unet(sample, torch.tensor([10, 500]), context, added_cond_kwargs=cond).sample


def _te_out(pipe) -> list[torch.Tensor]:
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return [te(ids, output_hidden_states=True).hidden_states[-2] for te in text_encoders(pipe)]


def test_both_unet_naming_styles_import_to_the_same_adapters(xl_lora):
    _, pipe, path, sd = xl_lora
    diffusers_sd = _diffusers_named(pipe, sd)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn1_to_q.alpha" in diffusers_sd
    assert len(diffusers_sd) == len(sd)
    sgm, sgm_report = _import(read_kohya(path)[0])
    dif, dif_report = _import(diffusers_sd)
    assert (sgm_report.conventions, dif_report.conventions) == ({"sgm"}, {"diffusers"})
    n_te = len(_te_names("lora_te1"))
    expected = {"unet": len(sd) // 3 - 2 * n_te, "text_encoder_0": n_te, "text_encoder_1": n_te}
    assert sgm_report.per_component == dif_report.per_component == expected
    for a, b in ((sgm.unet, dif.unet), *zip(text_encoders(sgm), text_encoders(dif), strict=True)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(_unet_out(sgm), _unet_out(dif))
    for x, y in zip(_te_out(sgm), _te_out(dif), strict=True):
        assert torch.equal(x, y)
    # the adapters are the exported ones (fp16-rounded) at the exported scale, and re-export to the SGM file exactly
    layer = sgm.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q")
    original = pipe.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q")
    assert torch.equal(layer.lora_B[ADAPTER].weight, original.lora_B[ADAPTER].weight.half().float())
    assert layer.scaling[ADAPTER] == original.scaling[ADAPTER]
    again = kohya_state_dict(dif.unet, text_encoders(dif), SDXL)
    assert again.keys() == sd.keys() and all(torch.equal(again[k], sd[k]) for k in sd)


# --- the export self-check on SDXL-specific defects -----------------------------------------------------------------

TE2_K = "lora_te2_text_model_encoder_layers_1_self_attn_k_proj"


def _drop_module(name: str):
    def edit(sd, _pipe):
        for part in ("lora_down.weight", "lora_up.weight", "alpha"):
            sd.pop(f"{name}.{part}")
    return edit


def _rename_prefix(old: str, new: str):
    def edit(sd, _pipe):
        for key in [k for k in sd if k.startswith(old)]:
            sd[new + key[len(old):]] = sd.pop(key)
    return edit


def _to_diffusers_names(sd, pipe):
    renamed = _diffusers_named(pipe, sd)
    sd.clear()
    sd.update(renamed)


DEFECTS = {
    "te2_layer_without_k_proj": (_drop_module(TE2_K), "lora_te2 layer 1: attention LoRA has"),
    "diffusers_unet_names": (_to_diffusers_names, "is not in SGM naming for sdxl"),
    "sd1_te_prefix": (_rename_prefix("lora_te1_", "lora_te_"), "prefix 'lora_te' not used for sdxl"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_sdxl_specific_defects_are_reported(xl_lora, tmp_path, defect):
    _, pipe, path, _ = xl_lora
    edit, message = DEFECTS[defect]
    sd, meta = read_kohya(path)
    edit(sd, pipe)
    meta.pop("sshs_model_hash")
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad), metadata=meta)
    report = verify_lora(bad, SDXL, pipe.unet, text_encoders(pipe))
    assert any(message in p for p in report.problems), report.problems


def test_sd1_metadata_on_an_sdxl_file_is_reported(xl_lora, tmp_path):
    """A1111 hides a LoRA whose ss_base_model_version does not start with sdxl_ when an SDXL model is loaded."""
    _, pipe, path, _ = xl_lora
    sd, meta = read_kohya(path)
    meta.pop("sshs_model_hash")
    meta.update({"ss_base_model_version": "sd_v1", "modelspec.architecture": "stable-diffusion-v1/lora"})
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta)
    report = verify_lora(tmp_path / "bad.safetensors", SDXL, pipe.unet, text_encoders(pipe))
    assert any("'ss_base_model_version'" in p for p in report.problems)
    assert any("modelspec.architecture" in p for p in report.problems)
    assert report.matched == report.expected
