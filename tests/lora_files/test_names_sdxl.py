"""SDXL groundwork: the bundled config-only folder builds the real SDXL base 1.0 models, and every attention projection
of the full-size UNet and both text encoders has a kohya name in SDXL's form (SGM UNet names, ``lora_te1``/``lora_te2``)
that resolves back to the same module. Everything is built on the meta device: no weights, no downloads, ~2 s.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from training.contract.errors import UserError
from training.lora_files.export import build_metadata
from training.lora_files.names import canonical_name, module_lookup, uses_sgm_names
from training.lora_files.self_check import verify_lora
from training.models.families import FAMILIES, SDXL, family_for

UNET_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
TE_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
SGM_ATTN = re.compile(r"^lora_unet_(input_blocks_\d+_1|middle_block_1|output_blocks_\d+_1)_transformer_blocks_\d+_"
                      r"attn[12]_(to_q|to_k|to_v|to_out_0)$")
# Parameter counts of stabilityai/stable-diffusion-xl-base-1.0: UNet, VAE, CLIP-L (TE1), OpenCLIP-bigG + projection.
EXPECTED_PARAMS = (2_567_463_684, 83_653_863, 123_060_480, 694_659_840)


@pytest.fixture(scope="module")
def sdxl():
    """Full-size SDXL UNet, VAE and both text encoders from ``assets/models/sdxl``, on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = SDXL.config_dir
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True))
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2", local_files_only=True))
    return unet, vae, te1, te2


@pytest.fixture(scope="module")
def table(sdxl):
    unet, _, te1, te2 = sdxl
    return module_lookup(unet, [te1, te2], SDXL)


def _expected_transformer_blocks(config) -> int:
    """Transformer blocks implied by the UNet config: per cross-attention level, (resnets per level) x depth."""
    depth, lpb = config["transformer_layers_per_block"], config["layers_per_block"]
    down = sum(lpb * d for d, t in zip(depth, config["down_block_types"], strict=True) if "CrossAttn" in t)
    up = sum((lpb + 1) * d for d, t in zip(reversed(depth), config["up_block_types"], strict=True) if "CrossAttn" in t)
    return down + depth[-1] + up


def test_bundled_sdxl_configs_build_the_full_size_models(sdxl):
    from diffusers import DDPMScheduler

    from training.models.detect import family_from_folder

    assert tuple(sum(p.numel() for p in m.parameters()) for m in sdxl) == EXPECTED_PARAMS
    unet, vae, te1, te2 = sdxl
    assert unet.config.cross_attention_dim == 2048 and unet.config.addition_embed_type == "text_time"
    assert vae.config.force_upcast is True and vae.config.scaling_factor == 0.13025
    assert (te1.config.hidden_act, te2.config.hidden_act) == ("quick_gelu", "gelu")
    assert te2.config.projection_dim == 1280 and te2.text_projection.out_features == 1280
    scheduler = DDPMScheduler.from_pretrained(SDXL.config_dir, subfolder="scheduler")
    assert (scheduler.config.beta_schedule, scheduler.config.beta_start, scheduler.config.beta_end) == (
        "scaled_linear", 0.00085, 0.012)
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.prediction_type == "epsilon"
    assert family_from_folder(SDXL.config_dir) == "sdxl"


def test_a_real_sdxl_checkpoint_layout_maps_onto_the_bundled_configs(sdxl):
    """diffusers' own LDM converters (what from_single_file runs) turn an SGM-layout file into exactly these models'
    parameters: UNet incl. label_emb, VAE, CLIP-L TE1, and the fused OpenCLIP-bigG TE2 with its text projection."""
    from diffusers.loaders import single_file_utils as sfu
    from ldm_convert import SDXL_CLIP, SDXL_OPEN_CLIP, clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    unet, vae, te1, te2 = sdxl

    def shapes(state: dict) -> dict:
        return {k: tuple(v.shape) for k, v in state.items()}

    unet_ldm = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(unet).items()}  # label_emb included
    te1_ldm = clip_to_ldm(te1, SDXL_CLIP)
    te2_ldm = open_clip_to_ldm(te2, SDXL_OPEN_CLIP, projection=te2.text_projection.weight.T)
    assert sfu.infer_diffusers_model_type(unet_ldm | te1_ldm | te2_ldm) == "xl_base"
    assert shapes(sfu.convert_ldm_unet_checkpoint(unet_ldm, unet.config)) == shapes(unet.state_dict())
    vae_ldm = {f"first_stage_model.{k}": v for k, v in vae_to_ldm(vae).items()}
    assert shapes(sfu.convert_ldm_vae_checkpoint(vae_ldm, vae.config)) == shapes(vae.state_dict())
    te1_sd = {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(te1_ldm).items()}
    assert shapes(te1_sd) == shapes(te1.state_dict())  # CLIPTextModel has no text_model. level in transformers 5
    te2_sd = sfu.convert_open_clip_checkpoint(te2, te2_ldm, prefix=SDXL_OPEN_CLIP)
    assert shapes(te2_sd) == shapes(te2.state_dict())


def test_every_unet_attention_projection_has_an_sgm_name_that_resolves(sdxl, table):
    unet = sdxl[0]
    assert uses_sgm_names(SDXL)
    blocks = [p for p, _ in unet.named_modules() if re.search(r"\.transformer_blocks\.\d+$", p)]
    assert len(blocks) == _expected_transformer_blocks(unet.config) == 70  # 2x2 + 2x10 down, 10 mid, 3x10 + 3x2 up
    names = set()
    for block in blocks:
        for attn in ("attn1", "attn2"):
            for leaf in UNET_ATTN:
                path = f"{block}.{attn}.{leaf}"
                name = canonical_name("unet", path, SDXL, unet)
                assert name is not None and SGM_ATTN.match(name), (path, name)
                assert table[name] == ("unet", path), name
                names.add(name)
    assert len(names) == len(blocks) * 2 * len(UNET_ATTN) == 560  # SDXL's 70 transformer blocks, attention only


@pytest.mark.parametrize(("name", "path"), [
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
     "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
    ("lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_out_0",
     "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0"),
    ("lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k",
     "mid_block.attentions.0.transformer_blocks.9.attn2.to_k"),
    ("lora_unet_output_blocks_0_1_transformer_blocks_9_attn1_to_v",
     "up_blocks.0.attentions.0.transformer_blocks.9.attn1.to_v"),
    ("lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_q",
     "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_q"),
    ("lora_unet_output_blocks_5_2_conv", "up_blocks.1.upsamplers.0.conv"),  # SDXL: upsampler after attention -> .2
    ("lora_unet_input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
    ("lora_unet_input_blocks_4_0_in_layers_2", "down_blocks.1.resnets.0.conv1"),
    ("lora_unet_label_emb_0_0", "add_embedding.linear_1"),
])
def test_known_sgm_names_point_at_the_right_module(sdxl, table, name, path):
    assert table[name] == ("unet", path)
    assert canonical_name("unet", path, SDXL, sdxl[0]) == name


def test_no_sgm_name_exceeds_the_unet_and_diffusers_names_still_resolve(sdxl, table):
    """Import accepts both UNet conventions (SGM/LDM and diffusers); the depth-10 levels must not spill past
    transformer_blocks_9."""
    unet_names = [n for n, (c, _) in table.items() if c == "unet"]
    depths = {int(m.group(1)) for n in unet_names if (m := re.search(r"transformer_blocks_(\d+)_", n))}
    assert max(depths) == 9
    assert table["lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn1_to_q"] == (
        "unet", "down_blocks.2.attentions.1.transformer_blocks.9.attn1.to_q")


@pytest.mark.parametrize(("index", "prefix", "layers"), [(0, "lora_te1", 12), (1, "lora_te2", 32)])
def test_every_text_encoder_attention_projection_resolves(sdxl, table, index, prefix, layers):
    te = sdxl[2 + index]
    assert te.config.num_hidden_layers == layers
    for i in range(layers):
        for leaf in TE_ATTN:
            name = f"{prefix}_text_model_encoder_layers_{i}_self_attn_{leaf}"
            component, path = table[name]
            assert component == index and isinstance(te.get_submodule(path), torch.nn.Linear)
            assert path.endswith(f"encoder.layers.{i}.self_attn.{leaf}")
            assert canonical_name(index, path, SDXL, te, num_text_encoders=2) == name
    assert not any(n.startswith(("lora_te_", f"{prefix}_text_model_encoder_layers_{layers}_")) for n in table)


def test_an_sdxl_lora_in_kohya_form_passes_the_export_check(sdxl, table, tmp_path):
    """All 560 UNet + 48 TE1 + 128 TE2 attention modules (rank 1, fp16 as exported) with SDXL metadata all match."""
    unet, _, te1, te2 = sdxl
    models = {"unet": unet, 0: te1, 1: te2}
    leaves = ("to_q", "to_k", "to_v", "to_out.0", *TE_ATTN)
    state = {}
    for component, model in models.items():
        for path, module in model.named_modules():
            if not path.endswith(leaves) or not isinstance(module, torch.nn.Linear):
                continue
            if component != "unet" and ".self_attn." not in path:
                continue
            name = canonical_name(component, path, SDXL, model, num_text_encoders=2)
            state[f"{name}.lora_down.weight"] = torch.full((1, module.in_features), 0.01, dtype=torch.float16)
            state[f"{name}.lora_up.weight"] = torch.full((module.out_features, 1), 0.01, dtype=torch.float16)
            state[f"{name}.alpha"] = torch.tensor(1.0)
    meta = build_metadata({"network_dim": 1, "network_alpha": 1}, SDXL, {}, state_dict=state)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.resolution"] == "1024x1024"
    save_file(state, tmp_path / "xl.safetensors", metadata=meta)
    report = verify_lora(tmp_path / "xl.safetensors", SDXL, unet, [te1, te2])
    assert report.ok, report.problems[:5]
    assert report.matched == report.expected == 560 + 48 + 128


def test_sdxl_is_chosen_only_by_detection_and_refuses_sd2_flags():
    from training.models.loading import choose_family

    assert FAMILIES["sdxl"] is SDXL and SDXL.tokenizer_pad == "<|endoftext|>" and SDXL.tokenizer_2_pad == "!"
    assert SDXL.te_prefixes == ("lora_te1", "lora_te2") and SDXL.default_resolution == 1024
    assert all(family_for(v2, v) is not SDXL for v2 in (False, True) for v in (False, True))
    assert choose_family("xl.safetensors", "sdxl", None, None) is SDXL
    assert choose_family("xl.safetensors", "sdxl", False, False) is SDXL
    with pytest.raises(UserError, match="v2 = true; remove v2"):
        choose_family("xl.safetensors", "sdxl", True, None)
    with pytest.raises(UserError, match="v-prediction SDXL"):
        choose_family("xl", "sdxl", None, None, folder_prediction="v_prediction")
