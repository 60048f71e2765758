"""Which modules get adapters, per preset, checked against LyCORIS 4.1.3's own module walk on the same tiny models.

The oracle is ``lycoris.kohya.LycorisNetworkKohya`` built on a copy of the tiny pipeline: for LyCORIS's presets with
the preset itself, for "kohya" with sd-scripts' networks.lora class lists (``LoRANetwork.UNET_TARGET_REPLACE_MODULE``
and friends: Transformer2DModel; ResnetBlock2D, Downsample2D, Upsample2D with conv_dim; CLIPAttention, CLIPMLP),
which LyCORIS walks by the same rule as sd-scripts (every Linear and 1x1 conv inside at the linear rank, larger
kernels at the conv rank when convs are enabled).
"""

from __future__ import annotations

import copy

import pytest
from tiny_models import build_tiny_pipeline

from training.contract.config import TrainConfig
from training.contract.network import LYCORIS
from training.networks.build import module_infos
from training.networks.targets import factorization, select_targets

RANK, CONV_RANK = 4, 2
SD_SCRIPTS_UNET = ["Transformer2DModel"]
SD_SCRIPTS_UNET_CONV = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
SD_SCRIPTS_TEXT = ["CLIPAttention", "CLIPMLP"]


def encoders(pipe) -> list:
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])


def te_prefixes(count: int) -> list[str]:
    return ["lora_te"] if count == 1 else [f"lora_te{i + 1}" for i in range(count)]


def ours(cfg: TrainConfig, pipe) -> dict[str, int]:
    """{kohya-style name: rank} of the modules our selection picks."""
    spec = cfg.network
    picked = {f"lora_unet_{t.path}".replace(".", "_"): spec.conv_dim if t.conv_rank else RANK
              for t in select_targets(spec, module_infos(pipe.unet), "unet")}
    tes = encoders(pipe)
    for prefix, te in zip(te_prefixes(len(tes)), tes, strict=True):
        picked |= {f"{prefix}_{t.path}".replace(".", "_"): spec.conv_dim if t.conv_rank else RANK
                   for t in select_targets(spec, module_infos(te), "text_encoder")}
    return picked


@pytest.fixture
def lycoris_network():
    """LycorisNetworkKohya with a preset applied, its class-level target lists restored afterwards."""
    from lycoris.kohya import LycorisNetworkKohya

    saved = {k: copy.copy(v) for k, v in vars(LycorisNetworkKohya).items() if k.isupper()}

    def build(pipe, preset: dict, conv_dim: int) -> dict[str, int]:
        LycorisNetworkKohya.apply_preset(preset)
        tes = encoders(pipe)
        net = LycorisNetworkKohya(tes if len(tes) > 1 else tes[0], pipe.unet, lora_dim=RANK, alpha=1,
                                  conv_lora_dim=conv_dim, conv_alpha=1, network_module="locon",
                                  warn_on_unmatched=False)
        return {lora.lora_name: lora.lora_dim for lora in net.loras}

    yield build
    for key, value in saved.items():
        setattr(LycorisNetworkKohya, key, value)


def as_sd_scripts_unet(pipe):
    """The pipeline with diffusers' attention layers under the class name sd-scripts' UNet gives them
    (``CrossAttention``), which LyCORIS's attn-only preset names; nothing else changes."""
    from diffusers.models.attention_processor import Attention

    cross_attention = type("CrossAttention", (Attention,), {})
    for module in pipe.unet.modules():
        if type(module) is Attention:
            module.__class__ = cross_attention
    return pipe


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("conv_dim", [0, CONV_RANK])
def test_kohya_preset_is_sd_scripts_networks_lora(family, conv_dim, lycoris_network):
    pipe = build_tiny_pipeline(family)
    cfg = TrainConfig(network_dim=RANK, conv_dim=conv_dim or None)
    unet_classes = SD_SCRIPTS_UNET + (SD_SCRIPTS_UNET_CONV if conv_dim else [])
    expected = lycoris_network(build_tiny_pipeline(family), {
        "enable_conv": bool(conv_dim), "unet_target_module": unet_classes, "unet_target_name": [],
        "text_encoder_target_module": SD_SCRIPTS_TEXT, "text_encoder_target_name": []}, conv_dim)
    picked = ours(cfg, pipe)
    assert picked == expected
    # what changed on purpose: feed-forward and proj_in/proj_out train too, not only the attention projections
    assert any(name.endswith("_ff_net_0_proj") for name in picked)
    assert any(name.endswith("_proj_in") for name in picked)
    assert any(name.endswith("_mlp_fc1") for name in picked)
    assert not any("time_embedding" in name or "conv_in" in name for name in picked)
    resnet_convs = {n: r for n, r in picked.items() if "resnets" in n}
    if conv_dim:
        assert resnet_convs and {r for n, r in resnet_convs.items() if n.endswith(("_conv1", "_conv2"))} == {2}
        assert {r for n, r in resnet_convs.items() if n.endswith("_time_emb_proj")} == {RANK}
    else:
        assert not resnet_convs


LYCORIS_CASES = [("attn-only", 0), ("attn-mlp", 0), ("unet-transformer-only", 0), ("full", CONV_RANK),
                 ("full", 0)]  # conv_dim 0: unset, LyCORIS's default (the linear rank)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize(("preset", "conv_dim"), LYCORIS_CASES)
def test_lycoris_presets_select_what_lycoris_selects(family, preset, conv_dim, lycoris_network):
    from lycoris.config import PRESET

    cfg = TrainConfig(network_module=LYCORIS, network_dim=RANK, conv_dim=conv_dim or None,
                      network_args=[f"preset={preset}"])
    oracle_preset = copy.deepcopy(PRESET[preset])
    if preset == "full":
        # LyCORIS 4.1.3 picks the time embedding's Linears twice in "full" (its class TimestepEmbedding and their
        # names are both listed) and then stops on its own duplicate-name check; by class alone it is the same set.
        assert "TimestepEmbedding" in oracle_preset["unet_target_module"]
        oracle_preset["unet_target_name"] = [n for n in oracle_preset["unet_target_name"]
                                             if not n.startswith("time_embedding.")]
    expected = lycoris_network(as_sd_scripts_unet(build_tiny_pipeline(family)), oracle_preset,
                               conv_dim or RANK)
    picked = ours(cfg, build_tiny_pipeline(family))
    assert picked == expected
    unet = {n for n in picked if n.startswith("lora_unet_")}
    assert unet, "every preset trains part of the UNet"
    if preset == "unet-transformer-only":
        assert not any(n.startswith("lora_te") for n in picked)
    if preset == "full":
        assert "lora_unet_conv_in" in picked and any("_resnets_" in n for n in picked)


def test_attn_only_trains_the_unet_attention_projections_only():
    pipe = build_tiny_pipeline("sd1")
    cfg = TrainConfig(network_module=LYCORIS, network_args=["preset=attn-only"])
    leaves = {t.path.rsplit(".", 1)[-1] if not t.path.endswith("to_out.0") else "to_out.0"
              for t in select_targets(cfg.network, module_infos(pipe.unet), "unet")}
    assert leaves == {"to_q", "to_k", "to_v", "to_out.0"}


@pytest.mark.parametrize("factor", [-1, 1, 2, 4, 8, 16, 3])
def test_lokr_factorization_is_peft_s(factor):
    from peft.tuners.lokr.layer import factorization as peft_factorization

    for dimension in [1, 2, 7, 12, 32, 48, 64, 320, 640, 768, 1280, 2048, 2560, 5120, 10240]:
        assert factorization(dimension, factor) == peft_factorization(dimension, factor), (dimension, factor)


def test_lokr_factorization_is_lycoris_s_on_sd_layers():
    from lycoris.functional.general import factorization as lycoris_factorization

    for dimension in [320, 640, 768, 1024, 1280, 2048, 2560, 5120, 10240]:
        for factor in [-1, 2, 4, 8, 16, 17]:
            assert factorization(dimension, factor) == lycoris_factorization(dimension, factor), (dimension, factor)
