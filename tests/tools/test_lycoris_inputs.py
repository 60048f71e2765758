"""LoHa and LoKr files through resize, merge-loras and inspect: each becomes (or is measured as) a LoRA/LoCon whose
change is checked against the change written here from the input's factors, with the SVD done in the test."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tool_files import delta_of, lycoris_lora, random_lora, run_tools, save_lora_file

from training.lora_files.names import unet_kohya_names, uses_sgm_names
from training.models.families import FAMILIES
from training.networks.targets import TABLE_FILE
from training.tools.deltas import named_kernel
from training.tools.merge_loras import merge_loras
from training.tools.resize import resize

QUIET = {"log": lambda *_: None}


def best_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """Eckart-Young, computed here: the closest rank-k matrix to the flattened change, and its error."""
    u, s, vh = torch.linalg.svd(delta.flatten(1).double(), full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return approx.reshape(delta.shape).float(), float(s[rank:].pow(2).sum().sqrt())


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_resize_turns_a_lycoris_file_into_the_best_lora_of_that_rank(tiny_ckpt, tmp_path, algo):
    tiny = tiny_ckpt("sd1")
    modules = tiny.modules(conv=algo == "loha")  # LoHa on a 3x3 conv too: its factors are flat in the file
    tensors, deltas = lycoris_lora(modules, algo, rank=2, alpha=1.0, seed=7)
    source = save_lora_file(tmp_path / f"{algo}.safetensors", tensors, "sd1")
    resize(source, tmp_path / "out.safetensors", rank=3, **QUIET)
    out = load_file(str(tmp_path / "out.safetensors"))
    assert not any("hada_" in key or "lokr_" in key for key in out)
    for name, delta in deltas.items():
        down = out[f"{name}.lora_down.weight"]
        assert down.shape[0] == 3 and down.shape[1:] == modules[name].weight.shape[1:]  # LoCon [r, in, 3, 3]
        approx, error = best_rank(delta, 3)
        got = delta_of(out, name)
        torch.testing.assert_close(got, approx, rtol=2e-2, atol=2e-3)
        assert math.isclose(float((delta - got).norm()), error, rel_tol=2e-2, abs_tol=2e-3)


def test_merge_loras_of_a_lora_and_a_lokr_at_full_rank_sums_their_changes(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    modules = tiny.modules(leaves=("to_q", "to_k"))
    plain = random_lora(modules, 2, 1.0, seed=8)
    lokr, lokr_deltas = lycoris_lora(modules, "lokr", rank=2, alpha=2.0, seed=9)
    a = save_lora_file(tmp_path / "a.safetensors", plain, "sd1")
    b = save_lora_file(tmp_path / "b.safetensors", lokr, "sd1")
    full = max(min(m.weight.shape) for m in modules.values())
    merge_loras([(a, 0.5), (b, -1.0)], tmp_path / "ab.safetensors", rank=full, **QUIET)
    out = load_file(str(tmp_path / "ab.safetensors"))
    for name in modules:
        expected = 0.5 * delta_of(plain, name) - lokr_deltas[name]
        torch.testing.assert_close(delta_of(out, name), expected, rtol=2e-2, atol=2e-3)


def test_merge_loras_of_a_loha_without_a_rank_asks_for_one(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sd1")
    modules = tiny.modules(leaves=("to_q",))
    a = save_lora_file(tmp_path / "a.safetensors", random_lora(modules, 2, 1.0, seed=1), "sd1")
    b = save_lora_file(tmp_path / "b.safetensors", lycoris_lora(modules, "loha", 2, 1.0, seed=2)[0], "sd1")
    done = run_tools("merge-loras", "--lora", a, "--lora", b, "--out", tmp_path / "c.safetensors")
    assert done.returncode == 2 and "b.safetensors is LoHa" in done.stderr and "--rank N" in done.stderr
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_inspect_gives_the_block_norms_of_a_lycoris_file(tiny_ckpt, tmp_path, algo):
    tiny = tiny_ckpt("sd1")
    tensors, deltas = lycoris_lora(tiny.modules(), algo, rank=2, alpha=1.0, seed=5)
    path = save_lora_file(tmp_path / f"{algo}.safetensors", tensors, "sd1")
    done = run_tools("inspect", path)
    assert done.returncode == 0, done.stderr
    kind = {"loha": "LoHa", "lokr": "LoKr"}[algo]
    assert f"network:  {kind}" in done.stdout
    block = [n for n in deltas if n.startswith("lora_unet_down_blocks_0_")]
    norm = math.sqrt(sum(float(deltas[n].pow(2).sum()) for n in block))
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith("unet down_blocks_0 "))
    assert math.isclose(float(row.split()[2]), norm, rel_tol=1e-3)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_the_kernel_read_from_a_module_name_matches_every_bundled_unet_table(family):
    """A flat LoHa factor does not show its layer's kernel; the name rule must give each UNet layer's own kind."""
    fam = FAMILIES[family]
    table = json.loads((fam.config_dir / TABLE_FILE).read_text())
    config = json.loads((fam.config_dir / "unet" / "config.json").read_text())
    rows = {row[0]: row for row in table["unet"]["modules"]}
    names = unet_kohya_names(rows, uses_sgm_names(fam), config)
    assert len(names) > 100
    for name, path in names.items():
        _, kind, _, _, kernel = rows[path]
        expected = (kernel, kernel) if kind.startswith("conv") else ()
        assert named_kernel(name, family) == expected, (name, kind, kernel)
