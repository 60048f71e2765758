"""Full-size SD1.5 UNet steps on a CUDA GPU (random weights): mixed precision stays finite and within memory.

Each measurement runs the benchmark in its own process, as users run it (accelerate fixes the mixed-precision
mode once per process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu


def bench(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "training.bench", *args], capture_output=True, text=True,
                         timeout=600, check=True)  # the benchmark itself asserts every loss is finite
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_sd15_512px_batch1_trains_finite_under_4_gib(precision):
    result = bench("--batch", "1", "--steps", "5", "--warmup", "3", "--precision", precision)
    assert result["precision"] == precision
    assert result["peak_mem_gib"] < 4.0, result  # consumer-GPU budget from the issue: cached latents, batch 1


def test_gradient_checkpointing_lowers_peak_memory_at_batch_8():
    plain = bench("--batch", "8", "--steps", "3", "--warmup", "2")
    checkpointed = bench("--batch", "8", "--steps", "3", "--warmup", "2", "--gradient-checkpointing")
    assert checkpointed["peak_mem_gib"] < plain["peak_mem_gib"]
