"""merge-loras: the exact merge's delta is the sum of the inputs' deltas, and merging it into a checkpoint equals
merging A then B; with --rank the error is the Eckart-Young error of the summed delta."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tool_files import delta_of, module_names, random_lora, run_tools, save_lora_file

from training.lora_files.self_check import verify_lora
from training.models.families import FAMILIES
from training.tools.merge import merge
from training.tools.merge_loras import merge_loras


@pytest.fixture
def two_loras(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    a = random_lora(tiny.modules(conv=True), rank=4, alpha=2.0, seed=21)
    b = random_lora(tiny.modules(leaves=("to_q", "to_v", "q_proj")), rank=2, alpha=8.0, seed=22)
    return tiny, save_lora_file(tmp_path / "a.safetensors", a, "sd1"), a, save_lora_file(
        tmp_path / "b.safetensors", b, "sd1"), b


def summed(tensors_and_strengths, name):
    return sum(s * delta_of(t, name) for t, s in tensors_and_strengths if f"{name}.alpha" in t)


def test_exact_merge_is_the_sum_of_the_deltas(two_loras, tmp_path):
    tiny, pa, a, pb, b = two_loras
    out = tmp_path / "ab.safetensors"
    done = run_tools("merge-loras", "--lora", f"{pa}:0.8", "--lora", f"{pb}:-1.5", "--out", out)
    assert done.returncode == 0, done.stderr
    ab = load_file(str(out))
    assert module_names(ab) == sorted(set(module_names(a)) | set(module_names(b)))
    for name in module_names(ab):
        want = summed([(a, 0.8), (b, -1.5)], name)
        torch.testing.assert_close(delta_of(ab, name), want, rtol=3e-3, atol=3e-3 * float(want.abs().max()))
        ranks = (4 if f"{name}.alpha" in a else 0) + (2 if f"{name}.alpha" in b else 0)
        assert ab[f"{name}.lora_down.weight"].shape[0] == ranks, "exact: the ranks add up"
    report = verify_lora(out, FAMILIES["sd1"], tiny.pipe.unet, [tiny.pipe.text_encoder])
    assert report.problems == []


def test_merging_the_merged_lora_equals_merging_a_then_b(two_loras, tmp_path):
    tiny, pa, _, pb, _ = two_loras
    quiet = {"log": lambda *_: None, "precision": "fp32"}
    merge(tiny.path, [(pa, 0.5)], tmp_path / "then_a.safetensors", **quiet)
    merge(tmp_path / "then_a.safetensors", [(pb, 1.0)], tmp_path / "then_b.safetensors", **quiet)
    merge_loras([(pa, 0.5), (pb, 1.0)], tmp_path / "ab.safetensors", log=lambda *_: None)
    merge(tiny.path, [(tmp_path / "ab.safetensors", 1.0)], tmp_path / "once.safetensors", **quiet)
    sequential, once = load_file(str(tmp_path / "then_b.safetensors")), load_file(str(tmp_path / "once.safetensors"))
    changed = 0
    for key, tensor in once.items():
        torch.testing.assert_close(tensor, sequential[key], rtol=1e-3, atol=2e-3)
        changed += not torch.equal(tensor, tiny.state[key].float())
    assert changed > 0


def test_rank_refactorises_the_sum_and_reports_the_eckart_young_error(two_loras, tmp_path):
    _, pa, a, pb, b = two_loras
    lines = []
    modules = merge_loras([(pa, 1.0), (pb, 1.0)], tmp_path / "r3.safetensors", rank=3, log=lines.append)
    ab = load_file(str(tmp_path / "r3.safetensors"))
    for name in module_names(ab):
        want = summed([(a, 1.0), (b, 1.0)], name)
        singular = torch.linalg.svdvals(want.flatten(1))
        error = float(singular[3:].pow(2).sum().sqrt())
        assert float((delta_of(ab, name) - want).norm()) == pytest.approx(error, rel=2e-2, abs=1e-3), name
        assert modules[name]["lora_down.weight"].shape[0] == min(3, int((singular > 1e-4).sum()))
        line = next(line for line in lines if line.startswith(name + " "))
        assert float(line.split(" error ")[1].split()[0]) == pytest.approx(error, rel=2e-2, abs=1e-3)
    assert lines[-2].startswith("overall: error")
