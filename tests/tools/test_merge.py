"""merge: every touched weight equals W + s * (alpha/r) * up @ down computed here from the files, every other
tensor is bit-identical, dtypes are kept. The expected checkpoint is made independently of the tool's key mapping:
the deltas are added to the tiny diffusers models' own modules, which tests/ldm_convert.py then lays out."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from ldm_convert import diffusers_to_ldm
from safetensors import safe_open
from safetensors.torch import load_file
from tool_files import delta_of, lycoris_lora, random_lora, run_tools, save_lora_file

from training.tools.merge import merge


def expected_checkpoint(tiny, loras: list[tuple[dict, float]], te_strength: float = 1.0) -> dict[str, torch.Tensor]:
    """The tiny pipeline with its fp16-rounded weights plus each LoRA's deltas, in the LDM layout (float32)."""
    pipe = copy.deepcopy(tiny.pipe)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if tiny.family == "sdxl" else [])
    tiny_copy = copy.copy(tiny)
    tiny_copy.pipe, tiny_copy.text_encoders = pipe, encoders
    modules = tiny_copy.modules(conv=True)
    for module in modules.values():
        module.weight.data = module.weight.data.half().float()
    with torch.no_grad():
        for tensors, strength in loras:
            for name in {k.split(".")[0] for k in tensors}:
                scale = strength if name.startswith("lora_unet") else strength * te_strength
                modules[name].weight += scale * delta_of(tensors, name)
    return diffusers_to_ldm(pipe)


def check_merged(tiny, out_path, expected):
    out = load_file(str(out_path))
    assert list(out) == list(load_file(str(tiny.path))), "the merged file keeps the checkpoint's keys and order"
    touched = [k for k in out if not torch.equal(expected[k].half().float(), tiny.state[k].float())]
    assert touched
    for key, tensor in out.items():
        assert tensor.dtype == tiny.state[key].dtype, key
        if key in touched:
            torch.testing.assert_close(tensor.float(), expected[key].half().float(), rtol=2e-3, atol=2e-3)
        else:
            assert torch.equal(tensor, tiny.state[key]), f"{key} changed though no LoRA touches it"
    return touched


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd2"])
def test_merge_adds_each_modules_delta_and_keeps_the_rest(tiny_ckpt, tmp_path, family):
    tiny = tiny_ckpt(family)
    tensors = random_lora(tiny.modules(conv=True), rank=4, alpha=2.0, seed=1)
    lora = save_lora_file(tmp_path / "a.safetensors", tensors, family)
    merge(tiny.path, [(lora, 0.7)], tmp_path / "out.safetensors", log=lambda *_: None)
    touched = check_merged(tiny, tmp_path / "out.safetensors", expected_checkpoint(tiny, [(tensors, 0.7)]))
    if family != "sd1":  # OpenCLIP: q, k and v are thirds of one fused in_proj_weight
        assert any(k.endswith("attn.in_proj_weight") for k in touched)


def test_two_loras_and_a_text_encoder_strength_through_the_command_line(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    a = random_lora(tiny.modules(), rank=4, alpha=4.0, seed=2)
    b = random_lora(tiny.modules(leaves=("to_k", "q_proj")), rank=2, alpha=1.0, seed=3)
    save_lora_file(tmp_path / "a.safetensors", a, "sd1")
    save_lora_file(tmp_path / "b.safetensors", b)  # no metadata: the family is not known, the keys decide
    out = tmp_path / "merged.safetensors"
    done = run_tools("merge", "--model", tiny.path, "--lora", tmp_path / "a.safetensors",
                     "--lora", f"{tmp_path / 'b.safetensors'}:-0.5", "--te-strength", "0.25", "--out", out)
    assert done.returncode == 0, done.stderr
    check_merged(tiny, out, expected_checkpoint(tiny, [(a, 1.0), (b, -0.5)], te_strength=0.25))
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    assert meta["note"] == "tiny", "the checkpoint's own metadata is kept"
    merged = json.loads(meta["loraforge_merged_loras"])
    assert [(m["file"], m["strength"], m["te_strength"]) for m in merged] == [
        ("a.safetensors", 1.0, 0.25), ("b.safetensors", -0.5, 0.25)]


def test_precision_casts_every_float_tensor(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    tensors = random_lora(tiny.modules(leaves=("to_q",)), rank=2, alpha=2.0, seed=4)
    lora = save_lora_file(tmp_path / "a.safetensors", tensors, "sd1")
    merge(tiny.path, [(lora, 1.0)], tmp_path / "out.safetensors", precision="bf16", log=lambda *_: None)
    out = load_file(str(tmp_path / "out.safetensors"))
    assert {t.dtype for t in out.values() if t.is_floating_point()} == {torch.bfloat16}
    expected = expected_checkpoint(tiny, [(tensors, 1.0)])
    for key, tensor in out.items():
        if not torch.equal(expected[key].half().float(), tiny.state[key].float()):
            torch.testing.assert_close(tensor.float(), expected[key].bfloat16().float(), rtol=1e-2, atol=1e-2)
        else:
            assert torch.equal(tensor, tiny.state[key].to(torch.bfloat16)), key


def test_a_ckpt_pickle_merges_like_its_safetensors(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    torch.save({"state_dict": tiny.state}, tmp_path / "model.ckpt")
    tensors = random_lora(tiny.modules(), rank=2, alpha=1.0, seed=5)
    lora = save_lora_file(tmp_path / "a.safetensors", tensors, "sd1")
    merge(tmp_path / "model.ckpt", [(lora, 1.0)], tmp_path / "out.safetensors", log=lambda *_: None)
    out = load_file(str(tmp_path / "out.safetensors"))
    expected = expected_checkpoint(tiny, [(tensors, 1.0)])
    assert set(out) == set(tiny.state)
    for key in out:
        torch.testing.assert_close(out[key].float(), expected[key].half().float() if tiny.state[key].dtype ==
                                   torch.float16 else expected[key], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_a_lycoris_file_merges_with_its_own_formula(tiny_ckpt, tmp_path, algo):
    tiny = tiny_ckpt("sd1")
    tensors, deltas = lycoris_lora(tiny.modules(), algo, rank=2, alpha=1.0, seed=3)
    lora = save_lora_file(tmp_path / f"{algo}.safetensors", tensors, "sd1")
    merge(tiny.path, [(lora, 0.5)], tmp_path / "out.safetensors", log=lambda *_: None)
    pipe = copy.deepcopy(tiny.pipe)
    tiny_copy = copy.copy(tiny)
    tiny_copy.pipe, tiny_copy.text_encoders = pipe, [pipe.text_encoder]
    modules = tiny_copy.modules()
    with torch.no_grad():
        for module in modules.values():
            module.weight.data = module.weight.data.half().float()
        for name, delta in deltas.items():
            modules[name].weight += 0.5 * delta
    check_merged(tiny, tmp_path / "out.safetensors", diffusers_to_ldm(pipe))
