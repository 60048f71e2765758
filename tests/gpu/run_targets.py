"""Every target of issue 16 beside its measured value, on a CUDA machine, in one command:

    python tests/gpu/run_targets.py            # about 10 minutes on an H100-class GPU
    python tests/gpu/run_targets.py --quick    # fewer steps, no inductor test run

Each measurement is a child process (``python -m training.bench ...``, one JSON line), so one that fails or runs out
of memory is a row with its one-line reason, not the end of the report. Then the CPU proxy's host overhead on the
device (``--overhead``) and the compiled step's checks with inductor (tests/run/test_compiled_step.py). The last
output is a Markdown table: target, measured, met. Exit status 0 even when a target is missed: the table is the
result; 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Target:
    name: str
    bench_args: list[str]
    field: str          # the JSON field measured
    bound: float
    at_least: bool      # True: measured >= bound; False: measured <= bound
    unit: str


def targets(quick: bool) -> list[Target]:
    steps = ["--steps", "10", "--warmup", "3"] if quick else ["--steps", "30", "--warmup", "10"]
    xl = ["--family", "sdxl", "--batch", "1", "--steps", "5", "--warmup", "2", "--gradient-checkpointing"]
    return [
        Target("SD1.5 512 px batch 1, eager", ["--batch", "1", *steps], "images_per_s", 35, True, "images/s"),
        Target("SD1.5 512 px batch 1, compiled", ["--batch", "1", "--compile", *steps], "images_per_s", 35, True,
               "images/s"),
        Target("SD1.5 512 px batch 8, compiled", ["--batch", "8", "--compile", *steps], "images_per_s", 130, True,
               "images/s"),
        Target("SD1.5 512 px best batch (32), compiled", ["--batch", "32", "--compile", *steps], "images_per_s", 200,
               True, "images/s"),
        Target("SD1.5 batch 1 peak memory", ["--batch", "1", *steps], "peak_mem_gib_run", 3, False, "GiB"),
        Target("SDXL 1024 px batch 1, checkpointing, peak memory", xl, "peak_mem_gib_run", 8, False, "GiB"),
        Target("SDXL 1024 px batch 1, checkpointing + fp8 base, peak memory", [*xl, "--fp8-base"],
               "peak_mem_gib_run", 6, False, "GiB"),
    ]


def bench(args: list[str], timeout: int = 900) -> tuple[dict | None, str]:
    """One benchmark child: its JSON result, or None and the reason in a line."""
    try:
        out = subprocess.run([sys.executable, "-m", "training.bench", *args], capture_output=True, text=True,
                             cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return None, (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
    return json.loads(lines[-1]), ""


def measure(target: Target, cache: dict[tuple[str, ...], tuple[dict | None, str]]) -> list[str]:
    key = tuple(target.bench_args)
    if key not in cache:
        started = time.time()
        cache[key] = bench(target.bench_args)
        print(f"{target.name}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    result, why = cache[key]
    relation = ">=" if target.at_least else "<="
    wanted = f"{relation} {target.bound:g} {target.unit}"
    if result is None or result.get(target.field) is None:
        return [target.name, wanted, f"not measured: {why or 'no value'}", "no"]
    value = float(result[target.field])
    met = value >= target.bound if target.at_least else value <= target.bound
    return [target.name, wanted, f"{value:g} {target.unit}", "yes" if met else "no"]


def overhead_rows() -> str:
    out = subprocess.run([sys.executable, "-m", "training.bench", "--overhead", "--steps", "20", "--warmup", "5"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    return "\n".join(table) if out.returncode == 0 else f"overhead proxy failed: {out.stderr.strip()[-300:]}"


def inductor_tests() -> str:
    env = dict(os.environ, LORAFORGE_INDUCTOR_TESTS="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/run/test_compiled_step.py", "tests/gpu"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=1800)
    return (out.stdout.strip().splitlines() or ["no output"])[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps; skip the inductor test run")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("run_targets: needs a CUDA GPU (the CPU numbers are `python -m training.bench --overhead`)",
              file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    cache: dict = {}
    rows = [measure(t, cache) for t in targets(args.quick)]
    print("\nhost overhead, CPU proxy on the device:\n" + overhead_rows(), flush=True)
    if not args.quick:
        print(f"\ncompiled step with inductor (tests/run/test_compiled_step.py, tests/gpu): {inductor_tests()}")
    print("\n| target | wanted | measured | met |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
