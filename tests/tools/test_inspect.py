"""inspect: family, network type, modules per part, ranks and alphas, the training metadata and a per-block table
of delta norms whose numbers are computed here from the file."""

from __future__ import annotations

import math
import re

from safetensors.torch import save_file
from tool_files import delta_of, random_lora, run_tools


def test_inspect_reports_what_the_file_holds(tiny_ckpt, tmp_path):
    tiny = tiny_ckpt("sdxl")
    tensors = random_lora(tiny.modules(conv=True), rank=4, alpha=2.0, seed=31)
    names = sorted({k.split(".")[0] for k in tensors})
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_output_name": "my-style", "ss_learning_rate": "0.0001",
            "ss_network_dim": "4"}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=meta)
    done = run_tools("inspect", tmp_path / "a.safetensors")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "family:   SDXL" in text
    assert "network:  LoCon" in text, "a 3x3 conv module makes it LoCon"
    unet = sum(n.startswith("lora_unet_") for n in names)
    te1 = sum(n.startswith("lora_te1_") for n in names)
    assert f"UNet: {unet}" in text and f"TE (te1): {te1}" in text
    assert f"ranks:    4 x{len(names)}" in text and f"alphas:   2 x{len(names)}" in text
    assert re.search(r"ss_output_name\s+my-style", text)
    # The norm of one block, computed here: every module of output block 2 (SGM names, SDXL's convention).
    block = [n for n in names if n.startswith("lora_unet_output_blocks_2_")]
    assert block
    norm = math.sqrt(sum(float(delta_of(tensors, n).pow(2).sum()) for n in block))
    row = next(line for line in text.splitlines() if line.strip().startswith("unet output_blocks_2 "))
    assert math.isclose(float(row.split()[2]), norm, rel_tol=1e-3)
    rows = [line.split()[1] for line in text.splitlines() if line.startswith("  lora_te") or line.startswith("  unet")]
    assert rows.index("input_blocks_1") < rows.index("middle_block") < rows.index("output_blocks_2")
