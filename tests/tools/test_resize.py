"""resize: to rank k the delta loses exactly the Eckart-Young error (the root of the dropped squared singular
values, computed here with torch.linalg.svdvals), the scale is kept, and kohya's dynamic rules pick the rank."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tool_files import delta_of, module_names, random_lora, run_tools, save_lora_file

from training.tools.resize import resize


@pytest.fixture
def rank8(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    tensors = random_lora(tiny.modules(conv=True), rank=8, alpha=4.0, seed=11)
    return save_lora_file(tmp_path / "r8.safetensors", tensors, "sd1"), tensors


def test_resize_to_rank_k_leaves_the_eckart_young_error(rank8, tmp_path):
    path, before = rank8
    out = tmp_path / "r3.safetensors"
    done = run_tools("resize", "--lora", path, "--rank", "3", "--out", out)
    assert done.returncode == 0, done.stderr
    after = load_file(str(out))
    assert module_names(after) == module_names(before)
    for name in module_names(before):
        original, resized = delta_of(before, name), delta_of(after, name)
        singular = torch.linalg.svdvals(original.flatten(1))
        assert after[f"{name}.lora_down.weight"].shape[0] == 3
        assert after[f"{name}.lora_down.weight"].shape[1:] == before[f"{name}.lora_down.weight"].shape[1:]
        error = float((original - resized).norm())
        assert error == pytest.approx(float(singular[3:].pow(2).sum().sqrt()), rel=2e-2), name
        kept = float(singular[:3].pow(2).sum().sqrt() / singular.pow(2).sum().sqrt())
        assert f"{kept:.1%}" in next(line for line in done.stdout.splitlines() if line.startswith(name + " "))
    assert "overall:" in done.stdout
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_network_dim"] == "3"
    assert meta["ss_network_alpha"] == "1.5", "alpha = (4 / 8) * 3 keeps each module's scale"
    assert meta["ss_training_comment"].startswith("dimension is resized from 8 to 3")


def kohya_sv_ratio_rank(singular: torch.Tensor, ratio: float) -> int:
    """kohya's sv_ratio rule, written out: count the singular values above max/ratio, clamp to [1, n-1], add 1."""
    count = int((singular > singular[0] / ratio).sum())
    return max(1, min(count, len(singular) - 1)) + 1


def test_dynamic_sv_ratio_picks_kohyas_rank_per_module_and_says_dynamic(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    tensors = random_lora(tiny.modules(), rank=8, alpha=8.0, seed=12)
    # Give the modules different spectra: scale the factors' rows so some singular values are tiny.
    for n, name in enumerate(module_names(tensors)):
        decay = torch.tensor([10.0 ** (-(i * (n % 3)) / 4) for i in range(8)], dtype=torch.float16)
        tensors[f"{name}.lora_down.weight"] = tensors[f"{name}.lora_down.weight"] * decay[:, None]
    path = save_lora_file(tmp_path / "a.safetensors", tensors, "sd1")
    modules = resize(path, tmp_path / "b.safetensors", dynamic=("sv_ratio", 4.0), log=lambda *_: None)
    ranks = set()
    for name in module_names(tensors):
        singular = torch.linalg.svdvals(delta_of(tensors, name).flatten(1))
        want = min(kohya_sv_ratio_rank(singular, 4.0), 8)
        assert modules[name]["lora_down.weight"].shape[0] == want, name
        ranks.add(want)
    assert len(ranks) > 1
    with safe_open(str(tmp_path / "b.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_network_dim"] == "Dynamic" and meta["ss_network_alpha"] == "Dynamic"
    assert meta["ss_training_comment"].startswith("Dynamic resize with sv_ratio: 4 from 8")
    assert json.loads(meta.get("ss_network_args", "null")) is None


def test_resize_output_passes_the_self_check(tiny_ckpt, rank8, tmp_path):
    from training.lora_files.self_check import verify_lora
    from training.models.families import FAMILIES

    tiny = tiny_ckpt("sd1")
    resize(rank8[0], tmp_path / "r2.safetensors", rank=2, log=lambda *_: None)
    report = verify_lora(tmp_path / "r2.safetensors", FAMILIES["sd1"], tiny.pipe.unet, [tiny.pipe.text_encoder])
    assert report.problems == []


def test_conv_rank_sets_the_rank_of_3x3_conv_modules(rank8, tmp_path):
    path, before = rank8
    modules = resize(path, tmp_path / "r.safetensors", rank=3, conv_rank=2, log=lambda *_: None)
    convs = [n for n in module_names(before) if before[f"{n}.lora_down.weight"].ndim == 4]
    assert convs
    for name, tensors in modules.items():
        assert tensors["lora_down.weight"].shape[0] == (2 if name in convs else 3), name
