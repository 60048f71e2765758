"""extract: a checkpoint that differs from its base by a known rank-2 change gives that change back, under the
names training exports, and the file passes the export self-check against the tuned model."""

from __future__ import annotations

import copy

import pytest
import torch
from ldm_convert import diffusers_to_ldm
from safetensors.torch import load_file, save_file
from tool_files import delta_of, module_names

from training.contract.errors import UserError
from training.lora_files.names import canonical_name
from training.lora_files.self_check import verify_lora
from training.models.families import FAMILIES
from training.tools.extract import extract

CHANGED = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
           "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2")


def rank2(out_dim: int, in_dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out_dim, 2, generator=gen) @ torch.randn(2, in_dim, generator=gen) * 0.1


@pytest.fixture(scope="module")
def tuned(tiny_ckpt, tmp_path_factory):
    """The tiny SD1 model with a rank-2 change in two UNet modules and one text-encoder projection (fp32 files)."""
    tiny = tiny_ckpt("sd1")
    folder = tmp_path_factory.mktemp("extract")
    save_file(diffusers_to_ldm(tiny.pipe), str(folder / "base.safetensors"))
    pipe = copy.deepcopy(tiny.pipe)
    changes = {}
    te_path = "text_model.encoder.layers.1.self_attn.q_proj"
    te_path = te_path if hasattr(pipe.text_encoder, "text_model") else te_path.removeprefix("text_model.")
    targets = [("unet", pipe.unet, p) for p in CHANGED] + [(0, pipe.text_encoder, te_path)]
    with torch.no_grad():
        for n, (component, model, path) in enumerate(targets):
            weight = model.get_submodule(path).weight
            change = rank2(weight.shape[0], weight.shape[1], seed=n)
            weight += change
            changes[canonical_name(component, path, FAMILIES["sd1"], model, 1)] = change
    save_file(diffusers_to_ldm(pipe), str(folder / "tuned.safetensors"))
    return folder, pipe, changes


def test_extract_recovers_a_known_rank2_change(tuned, tmp_path):
    folder, pipe, changes = tuned
    lines = []
    extract(folder / "base.safetensors", folder / "tuned.safetensors", tmp_path / "x.safetensors", rank=4,
            clamp_quantile=1.0, log=lines.append)
    lora = load_file(str(tmp_path / "x.safetensors"))
    assert module_names(lora) == sorted(changes), "only the changed modules, under training's export names"
    for name, change in changes.items():
        torch.testing.assert_close(delta_of(lora, name), change, rtol=1e-2, atol=1e-3)
        assert lora[f"{name}.lora_down.weight"].shape[0] == 4
        assert "kept 100.0%" in next(line for line in lines if line.startswith(name + " "))
    report = verify_lora(tmp_path / "x.safetensors", FAMILIES["sd1"], pipe.unet, [pipe.text_encoder])
    assert report.problems == []


def test_the_quantile_clamp_bounds_the_factors_as_kohya_does(tuned, tmp_path):
    folder, _, changes = tuned
    extract(folder / "base.safetensors", folder / "tuned.safetensors", tmp_path / "x.safetensors", rank=2,
            clamp_quantile=0.9, log=lambda *_: None)
    lora = load_file(str(tmp_path / "x.safetensors"))
    for name, change in changes.items():
        u, s, vh = torch.linalg.svd(change, full_matrices=False)
        up, down = u[:, :2] * s[:2], vh[:2]
        limit = float(torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.9))
        got_up, got_down = lora[f"{name}.lora_up.weight"].float(), lora[f"{name}.lora_down.weight"].float()
        assert float(got_up.abs().max()) == pytest.approx(limit, rel=1e-2)
        assert float(torch.cat([got_up.flatten(), got_down.flatten()]).abs().max()) <= limit * 1.01
        assert float(got_down.abs().max()) <= limit * 1.01


def test_an_unchanged_text_encoder_is_left_out(tiny_ckpt, tuned, tmp_path):
    folder, _, changes = tuned
    modules = extract(folder / "base.safetensors", folder / "tuned.safetensors", tmp_path / "x.safetensors",
                      rank=2, min_diff=10.0, log=lambda *_: None)
    assert sorted(modules) == sorted(n for n in changes if n.startswith("lora_unet_"))


def test_conv_rank_extracts_a_3x3_conv_change_as_locon(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    save_file(diffusers_to_ldm(tiny.pipe), str(tmp_path / "base.safetensors"))
    pipe = copy.deepcopy(tiny.pipe)
    path = "down_blocks.1.resnets.0.conv1"
    weight = pipe.unet.get_submodule(path).weight
    change = rank2(weight.shape[0], weight[0].numel(), seed=7).reshape(weight.shape)
    with torch.no_grad():
        weight += change
    save_file(diffusers_to_ldm(pipe), str(tmp_path / "tuned.safetensors"))
    with pytest.raises(UserError, match="no targeted weight differs"):  # without --conv-rank convs are not targets
        extract(tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", tmp_path / "none.safetensors", rank=4,
                log=lambda *_: None)
    modules = extract(tmp_path / "base.safetensors", tmp_path / "tuned.safetensors", tmp_path / "x.safetensors",
                      rank=4, conv_rank=3, clamp_quantile=1.0, log=lambda *_: None)
    name = canonical_name("unet", path, FAMILIES["sd1"], pipe.unet)
    assert list(modules) == [name]
    lora = load_file(str(tmp_path / "x.safetensors"))
    assert lora[f"{name}.lora_down.weight"].shape == (3, *weight.shape[1:])
    assert lora[f"{name}.lora_up.weight"].shape == (weight.shape[0], 3, 1, 1)
    torch.testing.assert_close(delta_of(lora, name), change, rtol=1e-2, atol=1e-3)
    report = verify_lora(tmp_path / "x.safetensors", FAMILIES["sd1"], pipe.unet, [pipe.text_encoder])
    assert report.problems == []
