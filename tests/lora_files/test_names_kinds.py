"""Every module kind a preset can select has the kohya name kohya's sd-scripts and LyCORIS write, and ComfyUI's key
map finds it: on the full-size SD1.5 and SDXL models (meta device, no weights).

ComfyUI maps a UNet LoRA name either from the original checkpoint key (``lora_unet_`` + the key under
``diffusion_model.`` without ``.weight``, dots as underscores: the SGM names SDXL files use) or from the diffusers key
(``lora_unet_`` + the diffusers path: the names SD1/SD2 files use), and a text-encoder name as ``lora_te_`` /
``lora_te1_`` / ``lora_te2_`` + ``text_model_encoder_layers_<i>_`` + one of q/k/v/out_proj, mlp fc1/fc2. The original
keys come from tests/ldm_convert.py, which diffusers' own single-file converter checks (test_names_sdxl.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ldm_convert import unet_to_ldm

from training.lora_files.names import canonical_name, module_lookup
from training.models.families import FAMILIES, SDXL

ROOT = Path(__file__).resolve().parents[2]
CLIP_LEAVES = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1", "mlp_fc2")


def _sd15():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = json.loads((ROOT / "assets" / "models" / "sd1" / "unet" / "config.json").read_text())
    te_cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(cfg), [CLIPTextModel(te_cfg)]


def _sdxl():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = SDXL.config_dir
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True))
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2", local_files_only=True))
    return unet, [te1, te2]


MODELS = {"sd1": _sd15, "sdxl": _sdxl}


@pytest.fixture(scope="module", params=sorted(MODELS))
def full_size(request):
    unet, encoders = MODELS[request.param]()
    return FAMILIES[request.param], unet, encoders


def _weighted_layers(model) -> list[str]:
    return [p for p, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]


def _comfy_unet_names(unet, sgm: bool) -> set[str]:
    """The UNet names ComfyUI's key map knows for this model, in one convention."""
    keys = [k.removesuffix(".weight") for k in unet.state_dict() if k.endswith(".weight")]
    if not sgm:
        return {"lora_unet_" + k.replace(".", "_") for k in keys}
    original = [k.removesuffix(".weight") for k in unet_to_ldm(unet) if k.endswith(".weight")]
    return {"lora_unet_" + k.replace(".", "_") for k in original}


def test_every_unet_linear_and_conv_has_a_name_comfyui_maps(full_size):
    family, unet, encoders = full_size
    sgm = family.name.startswith("sdxl")
    known = _comfy_unet_names(unet, sgm)
    table = module_lookup(unet, encoders, family)
    paths = _weighted_layers(unet)
    names = {path: canonical_name("unet", path, family, unet) for path in paths}
    assert [p for p, n in names.items() if n not in known] == []
    assert all(table[n] == ("unet", p) for p, n in names.items())
    kinds = {"ff_net_0_proj", "ff_net_2", "proj_in", "proj_out", "attn1_to_q", "attn2_to_out_0"}
    assert all(any(n.endswith(k) for n in names.values()) for k in kinds)


@pytest.mark.parametrize(("family_name", "path", "name"), [
    # kohya's sd-scripts names for SD1.5 LoCon (diffusers-style UNet names)
    ("sd1", "down_blocks.0.resnets.0.conv1", "lora_unet_down_blocks_0_resnets_0_conv1"),
    ("sd1", "down_blocks.1.resnets.0.conv_shortcut", "lora_unet_down_blocks_1_resnets_0_conv_shortcut"),
    ("sd1", "down_blocks.0.resnets.1.time_emb_proj", "lora_unet_down_blocks_0_resnets_1_time_emb_proj"),
    ("sd1", "down_blocks.2.downsamplers.0.conv", "lora_unet_down_blocks_2_downsamplers_0_conv"),
    ("sd1", "up_blocks.0.upsamplers.0.conv", "lora_unet_up_blocks_0_upsamplers_0_conv"),
    ("sd1", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
     "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"),
    ("sd1", "conv_in", "lora_unet_conv_in"),
    ("sd1", "time_embedding.linear_1", "lora_unet_time_embedding_linear_1"),
    # ... and for SDXL (SGM names: sdxl_train_network's own UNet)
    ("sdxl", "down_blocks.0.resnets.0.conv1", "lora_unet_input_blocks_1_0_in_layers_2"),
    ("sdxl", "down_blocks.0.resnets.0.conv2", "lora_unet_input_blocks_1_0_out_layers_3"),
    ("sdxl", "down_blocks.0.resnets.0.time_emb_proj", "lora_unet_input_blocks_1_0_emb_layers_1"),
    ("sdxl", "down_blocks.1.resnets.0.conv_shortcut", "lora_unet_input_blocks_4_0_skip_connection"),
    ("sdxl", "down_blocks.1.downsamplers.0.conv", "lora_unet_input_blocks_6_0_op"),
    ("sdxl", "mid_block.resnets.1.conv1", "lora_unet_middle_block_2_in_layers_2"),
    ("sdxl", "up_blocks.0.upsamplers.0.conv", "lora_unet_output_blocks_2_2_conv"),
    ("sdxl", "up_blocks.2.resnets.2.conv2", "lora_unet_output_blocks_8_0_out_layers_3"),
    ("sdxl", "down_blocks.1.attentions.0.transformer_blocks.1.ff.net.2",
     "lora_unet_input_blocks_4_1_transformer_blocks_1_ff_net_2"),
    ("sdxl", "down_blocks.1.attentions.0.proj_in", "lora_unet_input_blocks_4_1_proj_in"),
    ("sdxl", "conv_in", "lora_unet_input_blocks_0_0"),
    ("sdxl", "conv_out", "lora_unet_out_2"),
    ("sdxl", "time_embedding.linear_2", "lora_unet_time_embed_2"),
    ("sdxl", "add_embedding.linear_1", "lora_unet_label_emb_0_0"),
])
def test_known_kohya_names(family_name, path, name):
    unet, _ = MODELS[family_name]()
    assert canonical_name("unet", path, FAMILIES[family_name], unet) == name


def test_every_text_encoder_linear_has_the_name_comfyui_maps(full_size):
    family, _, encoders = full_size
    prefixes = ["lora_te"] if len(encoders) == 1 else ["lora_te1", "lora_te2"]
    for index, (te, prefix) in enumerate(zip(encoders, prefixes, strict=True)):
        layers = te.config.num_hidden_layers
        known = {f"{prefix}_text_model_encoder_layers_{i}_{leaf}" for i in range(layers) for leaf in CLIP_LEAVES}
        paths = [p for p in _weighted_layers(te) if ".layers." in p]
        names = {canonical_name(index, p, family, te, len(encoders)) for p in paths}
        assert names == known
