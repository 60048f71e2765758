"""kohya module names without a model: diffusers -> SGM/LDM UNet paths, text-encoder prefixes and CLIP paths.

The SGM names are those of the original Stable Diffusion checkpoints (``input_blocks``, ``middle_block``,
``output_blocks``), which kohya, A1111 and ComfyUI use for SDXL; the full-size SDXL tables are in test_names_sdxl.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from training.lora_files.names import canonical_name, diffusers_to_sgm, te_canonical_path, te_prefixes, unet_kohya_names
from training.models.families import FAMILIES


@pytest.mark.parametrize(("path", "sgm"), [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.2.attentions.1.proj_out", "input_blocks.8.1.proj_out"),
    ("mid_block.resnets.0.norm1", "middle_block.0.in_layers.0"),
    ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
    ("mid_block.resnets.1.conv2", "middle_block.2.out_layers.3"),
    ("up_blocks.1.resnets.2.time_emb_proj", "output_blocks.5.0.emb_layers.1"),
    ("up_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q",
     "output_blocks.6.1.transformer_blocks.0.attn1.to_q"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),  # no attention in up block 0 (SD1): .1
])
def test_sd_unet_paths_map_to_the_original_checkpoint_names(path, sgm):
    assert diffusers_to_sgm(path) == sgm


def test_an_upsampler_after_attention_is_the_third_module_of_its_block():
    assert diffusers_to_sgm("up_blocks.1.upsamplers.0.conv", up_has_attention={1: True}) == "output_blocks.5.2.conv"
    assert diffusers_to_sgm("up_blocks.1.upsamplers.0.conv", up_has_attention={0: True}) == "output_blocks.5.1.conv"


def test_unet_layout_comes_from_the_config_else_from_the_paths():
    up = ["up_blocks.1.attentions.0.proj_in", "up_blocks.1.upsamplers.0.conv"]
    # No config: two layers per block, and up block 1 has attentions because its paths say so.
    assert unet_kohya_names(up, sgm=True) == {"lora_unet_output_blocks_3_1_proj_in": up[0],
                                              "lora_unet_output_blocks_5_2_conv": up[1]}
    conv = ["down_blocks.1.resnets.0.conv1"]
    assert unet_kohya_names(conv, True, {"layers_per_block": [1, 3]}) == {"lora_unet_input_blocks_3_0_in_layers_2":
                                                                           conv[0]}
    assert unet_kohya_names(conv, True, {"up_block_types": ["UpBlock2D"]}) == {
        "lora_unet_input_blocks_4_0_in_layers_2": conv[0]}
    ups = ["up_blocks.0.upsamplers.0.conv"]
    assert unet_kohya_names(ups, True, {"up_block_types": ["CrossAttnUpBlock2D"]}) == {
        "lora_unet_output_blocks_2_2_conv": ups[0]}
    assert unet_kohya_names(up, sgm=False) == {"lora_unet_up_blocks_1_attentions_0_proj_in": up[0],
                                               "lora_unet_up_blocks_1_upsamplers_0_conv": up[1]}


@pytest.mark.parametrize("path", ["time_proj", "mid_block.resnets.0.nonlinearity", "down_blocks.0.norm",
                                  "up_blocks.0.upsamplers.0.norm", "down_blocks.0.downsamplers.0.norm"])
def test_paths_without_an_sgm_counterpart_have_no_name(path):
    assert diffusers_to_sgm(path) is None


def test_text_encoder_prefixes_come_from_the_family_else_kohyas_defaults():
    assert te_prefixes(SimpleNamespace(te_prefixes=("lora_te1", "lora_te2")), 2) == ["lora_te1", "lora_te2"]
    assert te_prefixes(SimpleNamespace(te_prefixes=("my_te",)), 1) == ["my_te"]
    assert te_prefixes(SimpleNamespace(), 1) == ["lora_te"]
    assert te_prefixes(SimpleNamespace(te_prefixes=None), 2) == ["lora_te1", "lora_te2"]


def test_clip_paths_are_always_under_text_model():
    assert te_canonical_path("encoder.layers.0.self_attn.q_proj") == "text_model.encoder.layers.0.self_attn.q_proj"
    assert te_canonical_path("text_model.encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
    assert te_canonical_path("base_model.model.encoder.layers.1.mlp.fc2") == "text_model.encoder.layers.1.mlp.fc2"
    # A model that still has its text_model submodule already gives canonical paths.
    assert te_canonical_path("text_model.encoder.layers.0.mlp.fc1", True) == "text_model.encoder.layers.0.mlp.fc1"


def test_a_lone_text_encoder_is_named_lora_te():
    assert canonical_name(0, "encoder.layers.0.self_attn.q_proj", FAMILIES["sd1"]) == (
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj")
