"""Bad input: each is one line on stderr naming the file and what to do, exit status 2, and no output file."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch
from safetensors.torch import save_file
from tool_files import random_lora, run_tools, save_lora_file

from training.contract.errors import NoSpaceLeft, UserError
from training.tools.merge import merge
from training.tools.resize import resize


@pytest.fixture
def files(tiny_ckpt, tmp_path):
    sd1, sdxl = tiny_ckpt("sd1"), tiny_ckpt("sdxl")
    good = save_lora_file(tmp_path / "sd1.safetensors", random_lora(sd1.modules(), 2, 1.0, seed=41), "sd1")
    xl = save_lora_file(tmp_path / "xl.safetensors", random_lora(sdxl.modules(), 2, 1.0, seed=42), "sdxl")
    stray = random_lora(sd1.modules(leaves=("to_q",)), 2, 1.0, seed=43)
    stray.update({k.replace("to_q", "to_qq"): v.clone() for k, v in stray.items()})
    stray_path = save_lora_file(tmp_path / "stray.safetensors", stray)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    cut_model = tmp_path / "cut_model.safetensors"
    cut_model.write_bytes(sd1.path.read_bytes()[:-1000])
    dora = tmp_path / "dora.safetensors"
    save_file({"lora_unet_a_to_q.lora_down.weight": torch.ones(2, 4), "lora_unet_a_to_q.lora_up.weight":
               torch.ones(4, 2), "lora_unet_a_to_q.dora_scale": torch.ones(4, 1)}, str(dora))
    Files = namedtuple("Files", "sd1 good xl stray cut cut_model dora out")
    return Files(sd1.path, good, xl, stray_path, cut, cut_model, dora, tmp_path / "out.safetensors")


CASES = {
    "an SDXL LoRA onto an SD1.5 checkpoint": (
        lambda f: ["merge", "--model", f.sd1, "--lora", f.xl, "--out", f.out],
        ["xl.safetensors", "SDXL LoRA", "SD1.x"]),
    "LoRA keys that match no module, listed": (
        lambda f: ["merge", "--model", f.sd1, "--lora", f.stray, "--out", f.out], ["stray.safetensors", "match no",
                                                                                  "to_qq"]),
    "a truncated LoRA": (
        lambda f: ["merge", "--model", f.sd1, "--lora", f.cut, "--out", f.out], ["cut.safetensors", "again"]),
    "a truncated checkpoint": (
        lambda f: ["merge", "--model", f.cut_model, "--lora", f.good, "--out", f.out], ["cut_model.safetensors",
                                                                                       "truncated"]),
    "rank 0": (lambda f: ["resize", "--lora", f.good, "--rank", "0", "--out", f.out], ["--rank", "1 or more"]),
    "the output is the input": (
        lambda f: ["resize", "--lora", f.good, "--rank", "1", "--out", f.good, "--force"], ["sd1.safetensors",
                                                                                           "also an input"]),
    "a DoRA file to resize": (
        lambda f: ["resize", "--lora", f.dora, "--rank", "1", "--out", f.out], ["dora.safetensors", "DoRA",
                                                                               "`merge`"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(files, case):
    make_args, words = CASES[case]
    before = sorted(p.name for p in files.out.parent.iterdir())
    done = run_tools(*make_args(files))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0]
    assert sorted(p.name for p in files.out.parent.iterdir()) == before, "nothing written, not even a temp file"


def test_an_existing_output_needs_force(files):
    files.out.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists; choose another name or add --force"):
        resize(files.good, files.out, rank=1, log=lambda *_: None)
    assert files.out.read_bytes() == b"keep me"
    resize(files.good, files.out, rank=1, force=True, log=lambda *_: None)
    assert files.out.read_bytes() != b"keep me"


def test_not_enough_disk_space_is_refused_before_writing(files, monkeypatch):
    usage = shutil.disk_usage(files.out.parent)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=4096))
    with pytest.raises(NoSpaceLeft, match=r"while saving the merged checkpoint out\.safetensors"):
        merge(files.sd1, [(files.good, 1.0)], files.out, log=lambda *_: None)
    assert [p for p in files.out.parent.iterdir() if p.name.startswith((".out", "out"))] == []


def failing_after(calls: int, real):
    """``real`` until its ``calls``-th call, which raises: a merge that fails half-way through its output."""
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] >= calls:
            raise RuntimeError("failed half-way")
        return real(*args, **kwargs)
    return wrapped


def test_a_merge_that_fails_half_way_leaves_nothing(files, monkeypatch, tmp_path, tiny_sd1):
    import training.tools.merge as merge_module

    monkeypatch.setattr(merge_module, "merged_tensor", failing_after(5, merge_module.merged_tensor))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="half-way"):
        merge(files.sd1, [(files.good, 1.0)], files.out, log=lambda *_: None)
    with pytest.raises(RuntimeError, match="half-way"):
        merge(tiny_sd1, [(files.good, 1.0)], tmp_path / "folder_out", log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no output, no temp file or folder"
