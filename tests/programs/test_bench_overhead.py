"""``python -m training.bench --overhead``: ms/step, ATen ops and host syncs per step on the CPU proxy, ours beside a
minimal peft loop; our step never waits for the device between loss read-backs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from timing import scaled

from training.run.overhead import StepCounter, optimizer_step_counters

ROOT = Path(__file__).resolve().parents[2]


def test_counter_counts_scalar_reads_but_not_the_optimizers_cpu_step_counters():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = torch.optim.AdamW([weight], lr=1e-3, foreach=False)  # its step reads the counter with .item()

    def step(read_loss: bool) -> None:
        loss = (weight**2).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if read_loss:
            loss.item()

    step(False)  # the optimizer's state, step counter included, exists from here on
    with StepCounter() as unfiltered:
        step(False)
    assert unfiltered.syncs >= 1  # the counter's .item() reaches the dispatcher as a scalar read
    with StepCounter(ignored=optimizer_step_counters(optimizer)) as counter:
        step(False)
    assert counter.syncs == 0 and counter.ops > 5
    with StepCounter(ignored=optimizer_step_counters(optimizer)) as counter:
        step(True)
    assert counter.syncs == 1  # the loss read


def test_overhead_benchmark_reports_ours_beside_a_minimal_loop_with_no_host_sync():
    out = subprocess.run([sys.executable, "-m", "training.bench", "--overhead", "--variants",
                          "ours-eager,minimal-eager", "--steps", "1", "--warmup", "1", "--rounds", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=scaled(300))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["ours-eager", "minimal-eager"]
    ours, minimal = rows
    assert ours["host_syncs_per_step"] == 0  # losses stay on the device until the read-back every few steps
    assert ours["ops_per_step"] > 5000 and minimal["ops_per_step"] > 5000  # SD1.5's topology: thousands of ops
    assert ours["ms_per_step"] > 0 and ours["threads"] == 1
    assert "| ours-eager |" in out.stdout and "| minimal-eager |" in out.stdout
