"""torch_compile = true on a bucketed run with validation: it finishes (automatic dynamic shapes used to recompile
the second bucket symbolically and inductor failed on it), with zero graph breaks, one graph per bucket shape and
per train/no-grad mode, each compile shown as its own phase, inductor's caches beside the run folders, and the
same LoRA as the eager step.

The backend here is aot_eager (dynamo's capture, AOTAutograd's joint forward/backward graph, eager kernels): graph
breaks, recompiles and the train/no-grad split happen in those layers, and it compiles in seconds. Inductor's code
generation takes minutes per shape on a CI CPU: LORAFORGE_INDUCTOR_TESTS=1 runs the same checks with inductor
(the backend whose symbolic-shape failure lost the run), as tests/gpu/run_targets.py does on a GPU machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import make_image_dataset

from training.contract.config import TrainConfig
from training.contract.events import read_events
from training.run.compiled import COMPILE_CACHE_DIR
from training.run.runner import run

STEPS = 10
BACKEND = "inductor" if os.environ.get("LORAFORGE_INDUCTOR_TESTS") == "1" else "aot_eager"


def three_bucket_dataset(root: Path) -> Path:
    """Two images in each of three aspect buckets (96x96, 128x64, 64x128 at resolution 96)."""
    for name, size in {"1_square": (96, 96), "1_wide": (128, 64), "1_tall": (64, 128)}.items():
        make_image_dataset(root, {name: 2}, size=size)
    return root


def config(model: Path, data: Path, out: Path, **extra) -> TrainConfig:
    values = {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "resolution": "96", "min_bucket_reso": 64, "max_bucket_reso": 128, "bucket_reso_steps": 32,
        "network_dim": 4, "network_alpha": 4.0, "learning_rate": 1e-3, "lr_scheduler": "constant",
        "max_train_steps": STEPS, "mixed_precision": "no", "seed": 3, "network_train_unet_only": True,
        "train_batch_size": 2, "max_data_loader_n_workers": 0,
        # one image of six held out: its bucket keeps a single training image (a partial batch, a shape of its
        # own), and validation runs under no_grad on the held-out image's shape
        "validation_split": 0.17, "validation_every_n_steps": 5,
    } | extra
    return TrainConfig(**values)


def train_shapes(events: list) -> set[str]:
    return {m.group(1) for e in events if e["event"] == "status" and e["phase"] == "compiling"
            if (m := re.match(r"compiling for (bucket \S+ \(batch \d\)): \d+ s", e["msg"]))}


def delta(tensors: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    """A module's weight change from its file tensors (the alpha scale is the same on both sides)."""
    up, down = tensors[f"{module}.lora_up.weight"], tensors[f"{module}.lora_down.weight"]
    return up.float().flatten(1) @ down.float().flatten(1)


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory, tiny_sd1):
    """One compiled run shared by the assertions (compiling on a CPU is slow), with dynamo's counters."""
    from torch._dynamo.utils import counters

    root = tmp_path_factory.mktemp("compiled")
    data = three_bucket_dataset(root / "data")
    counters.clear()
    torch._dynamo.reset()
    outcome = run(config(tiny_sd1, data, root / "runs" / "compiled", torch_compile=True,
                                dynamo_backend=BACKEND))
    stats = {"graphs": counters["stats"]["unique_graphs"], "breaks": dict(counters["graph_break"])}
    torch._dynamo.reset()
    return outcome, root, data, stats


@pytest.mark.slow
def test_compiled_run_finishes_with_one_graph_per_shape_and_no_graph_break(compiled_run):
    outcome, root, _, stats = compiled_run
    assert outcome == "done"
    events = read_events(root / "runs" / "compiled")
    assert stats["breaks"] == {}
    shapes = train_shapes(events)
    assert len(shapes) == 3, shapes  # two full buckets and the partial one
    # one graph per training shape, one for validation (eval, no_grad) on the held-out image's shape
    assert stats["graphs"] == len(shapes) + 1, stats
    assert any(e["event"] == "status" and re.fullmatch(r"compiling for validation: \d+ s.*", e["msg"])
               for e in events)
    assert [e["event"] for e in events].count("val") == 3  # at steps 0, 5 and 10


@pytest.mark.slow
def test_compiled_lora_matches_eager_and_caches_kernels_beside_the_runs(compiled_run, tiny_sd1):
    outcome, root, data, _ = compiled_run
    assert outcome == "done"
    assert run(config(tiny_sd1, data, root / "runs" / "eager")) == "done"
    compiled = load_file(str(root / "runs" / "compiled" / "lora.safetensors"))
    eager = load_file(str(root / "runs" / "eager" / "lora.safetensors"))
    assert compiled.keys() == eager.keys()  # the kohya names, without torch.compile's "_orig_mod."
    ups = [k for k in eager if k.endswith("lora_up.weight")]
    assert any(eager[k].abs().max() > 1e-3 for k in ups)  # trained away from LoRA's zero start
    # Compared as each module's weight change (up @ down), in norm: AdamW moves every weight by about lr per step
    # whatever its gradient's size, so a last-bit difference in a near-zero gradient flips single elements' steps
    # (inductor reorders sums: about 6% here; aot_eager runs eager's kernels: about 0).
    modules = [k.removesuffix(".lora_up.weight") for k in ups]
    change = torch.stack([torch.linalg.norm(delta(eager, m)) for m in modules]).norm()
    difference = torch.stack([torch.linalg.norm(delta(compiled, m) - delta(eager, m)) for m in modules]).norm()
    assert difference < 0.1 * change, (difference, change)
    assert all(torch.equal(compiled[k], eager[k]) for k in eager if k.endswith(".alpha"))
    cache = root / "runs" / COMPILE_CACHE_DIR
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache.resolve())
    if BACKEND == "inductor":  # aot_eager generates no kernels to keep
        assert any(p.is_file() for p in cache.rglob("*")), "no compiled kernels kept for the next run"
