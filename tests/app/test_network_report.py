"""The Results report's network type and module counts per kind, from LoRA files written by hand here the way
kohya (LoRA, LoCon) and LyCORIS (LoHa, LoKr, DoRA) lay them out: read from the header and metadata, without torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from app.results import format_report, lora_report, metadata_network

# SD1.5 widths: a first down block's attention (320 wide, text context 768), its resnet's 3x3 convs and its 1x1
# proj_in, the first text-encoder layer (768 wide).
ATTN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_{}"
PROJ_IN = "lora_unet_down_blocks_0_attentions_0_proj_in"
RESNET = "lora_unet_down_blocks_0_resnets_0_conv{}"
DOWNSAMPLER = "lora_unet_down_blocks_0_downsamplers_0_conv"
TE = "lora_te_text_model_encoder_layers_0_self_attn_{}_proj"
SDXL_CONV = "lora_unet_input_blocks_1_0_in_layers_2"  # SGM name of a resnet's first 3x3 conv


def zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float16)


def alpha(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float16)


def lora_module(name: str, rank: int, n_in: int, n_out: int, kernel: int | None = None) -> dict[str, np.ndarray]:
    """kohya's LoRA/LoCon module: down [r, in] (a conv's [r, in, k, k]), up [out, r] ([out, r, 1, 1])."""
    down = zeros(rank, n_in, kernel, kernel) if kernel else zeros(rank, n_in)
    up = zeros(n_out, rank, 1, 1) if kernel else zeros(n_out, rank)
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": alpha(rank / 2)}


def loha_module(name: str, rank: int, n_in: int, n_out: int) -> dict[str, np.ndarray]:
    """LyCORIS's LoHa without Tucker: w1_a/w2_a [out, r], w1_b/w2_b [r, in x kernel] (a conv's kernel flattened)."""
    return {f"{name}.hada_w1_a": zeros(n_out, rank), f"{name}.hada_w1_b": zeros(rank, n_in),
            f"{name}.hada_w2_a": zeros(n_out, rank), f"{name}.hada_w2_b": zeros(rank, n_in),
            f"{name}.alpha": alpha(rank)}


def lokr_module(name: str, n_in: int, n_out: int, kernel: int | None = None) -> dict[str, np.ndarray]:
    """LyCORIS's LoKr with full factors: w1 [a, b] and w2 [out/a, in/b] (a conv's w2 keeps its kernel)."""
    w2 = zeros(n_out // 4, n_in // 4, kernel, kernel) if kernel else zeros(n_out // 4, n_in // 4)
    return {f"{name}.lokr_w1": zeros(4, 4), f"{name}.lokr_w2": w2}


def write(path: Path, tensors: dict[str, np.ndarray], module: str, args: dict[str, str] | None = None) -> Path:
    meta = {"ss_network_module": module, "ss_network_dim": "4", "ss_network_alpha": "2"}
    if args:
        meta["ss_network_args"] = json.dumps(args)  # kohya writes the args as a JSON object of strings
    save_file(tensors, str(path), metadata=meta)
    return path


def locon_file(path: Path) -> Path:
    tensors = {}
    for p in ("q", "out_0"):
        tensors |= lora_module(ATTN.format(p), 4, 320, 320)
    tensors |= lora_module(PROJ_IN, 4, 320, 320, kernel=1)  # a 1x1 conv: ranked like a Linear
    for i in (1, 2):
        tensors |= lora_module(RESNET.format(i), 8, 320, 320, kernel=3)
    tensors |= lora_module(DOWNSAMPLER, 8, 320, 320, kernel=3)
    for p in "qkv":
        tensors |= lora_module(TE.format(p), 4, 768, 768)
    return write(path, tensors, "networks.lora", {"conv_dim": "8", "conv_alpha": "4"})


def test_a_locon_file_counts_its_conv_modules_apart(tmp_path):
    report = lora_report(locon_file(tmp_path / "locon.safetensors"))
    assert report.network_kind == "LoCon"
    assert report.shapes == {("UNet", "linear"): 3, ("UNet", "conv"): 3, ("text encoder", "linear"): 3}
    assert report.ranks == {4: 6, 8: 3}
    text = format_report(report)
    assert "| Network | LoCon (networks.lora, conv_dim=8 conv_alpha=4) |" in text
    assert "| Modules | 9 (UNet 6, text encoder 3) |" in text
    assert "| Modules by kind | UNet: 3 linear, 3 conv · text encoder: 3 linear |" in text


def test_a_plain_lora_file_is_lora_with_linear_modules_only(tmp_path):
    tensors = lora_module(ATTN.format("q"), 4, 320, 320) | lora_module(TE.format("q"), 4, 768, 768)
    report = lora_report(write(tmp_path / "lora.safetensors", tensors, "networks.lora"))
    assert report.network_kind == "LoRA"
    assert "| Modules by kind | UNet: 1 linear · text encoder: 1 linear |" in format_report(report)


def test_a_loha_file_is_loha_and_its_flattened_convs_are_told_by_name(tmp_path):
    tensors = loha_module(ATTN.format("q"), 4, 320, 320) | loha_module(RESNET.format(1), 4, 320 * 9, 320)
    tensors |= loha_module(TE.format("q"), 4, 768, 768)
    report = lora_report(write(tmp_path / "loha.safetensors", tensors, "lycoris.kohya",
                               {"algo": "loha", "preset": "full", "conv_dim": "4", "conv_alpha": "4"}))
    assert report.network_kind == "LoHa"
    assert report.shapes == {("UNet", "linear"): 1, ("UNet", "conv"): 1, ("text encoder", "linear"): 1}
    assert report.ranks == {4: 3}
    text = format_report(report)
    assert "| Network | LoHa (lycoris.kohya, algo=loha preset=full conv_dim=4 conv_alpha=4) |" in text
    assert "| Modules by kind | UNet: 1 linear, 1 conv · text encoder: 1 linear |" in text
    assert "12 hada_w1_a" not in text and "3 hada_w1_a" in text  # the keys are listed by their own names


def test_a_lokr_file_is_lokr_with_its_conv_told_by_the_kernel(tmp_path):
    tensors = lokr_module(ATTN.format("q"), 320, 320) | lokr_module(SDXL_CONV, 320, 320, kernel=3)
    report = lora_report(write(tmp_path / "lokr.safetensors", tensors, "lycoris.kohya", {"algo": "lokr"}))
    assert report.network_kind == "LoKr"
    assert report.shapes == {("UNet", "linear"): 1, ("UNet", "conv"): 1}
    assert not report.ranks  # full Kronecker factors have no rank
    assert "| Modules by kind | UNet: 1 linear, 1 conv |" in format_report(report)


def test_a_dora_file_is_locon_with_dora(tmp_path):
    tensors = lora_module(ATTN.format("q"), 4, 320, 320) | {f"{ATTN.format('q')}.dora_scale": zeros(320, 1)}
    tensors |= lora_module(RESNET.format(1), 4, 320, 320, kernel=3) | {f"{RESNET.format(1)}.dora_scale":
                                                                        zeros(320, 1, 1, 1)}
    report = lora_report(write(tmp_path / "dora.safetensors", tensors, "lycoris.kohya",
                               {"algo": "locon", "dora_wd": "True"}))
    assert report.network_kind == "LoCon+DoRA" and report.dora_modules == 2
    assert report.shapes == {("UNet", "linear"): 1, ("UNet", "conv"): 1}
    assert "the metadata says" not in format_report(report)  # LyCORIS's full preset: LoCon+DoRA too


def test_flattened_loha_convs_are_told_by_their_sgm_names_too(tmp_path):
    tensors = loha_module(SDXL_CONV, 4, 320 * 9, 320) | loha_module("lora_unet_input_blocks_3_0_op", 4, 320 * 9, 320)
    tensors |= loha_module("lora_unet_input_blocks_1_0_skip_connection", 4, 320, 640)  # 1x1: ranked as linear
    report = lora_report(write(tmp_path / "sdxl-loha.safetensors", tensors, "lycoris.kohya", {"algo": "loha"}))
    assert report.shapes == {("UNet", "conv"): 2, ("UNet", "linear"): 1}


def test_the_metadata_type_is_read_and_a_disagreement_is_said(tmp_path):
    assert metadata_network({"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "lokr"}'}) == "LoKr"
    assert metadata_network({"ss_network_module": "networks.lora", "ss_network_args": '["conv_dim=4"]'}) == "LoCon"
    assert metadata_network({"ss_network_module": "networks.lora"}) == "LoRA"
    assert metadata_network({"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "boft"}'}) is None
    assert metadata_network({}) is None
    tensors = lora_module(ATTN.format("q"), 4, 320, 320)
    report = lora_report(write(tmp_path / "odd.safetensors", tensors, "lycoris.kohya", {"algo": "loha"}))
    assert "| Network | LoRA (lycoris.kohya, algo=loha); the metadata says LoHa |" in format_report(report)
