"""python -m training.compare end to end in a real subprocess, on the tiny random-weight model and a real LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_checks import export_file, lora_pipeline
from PIL import Image
from timing import scaled

from app.compare import CompareRequest, run_compare
from app.supervisor import JobSupervisor
from training.compare import LABEL_HEIGHT, MARGIN, cell_boxes
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.errors import UserError

SIZE = 64
PROMPT, SEED, STEPS = "red, circle", 7, 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_sd1) -> Path:
    """A run folder as the trainer leaves it: job.toml on the tiny model and a LoRA with clearly non-zero weights."""
    run = tmp_path_factory.mktemp("data") / "runs" / "tiny" / "20240101-120000"
    run.mkdir(parents=True)
    save_config(TrainConfig(pretrained_model_name_or_path=str(tiny_sd1), resolution=str(SIZE), output_name="tiny",
                            output_dir=str(run), mixed_precision="no", sample_sampler="euler_a"), run / "job.toml")
    pipe = lora_pipeline("sd1", 4, 4.0)
    with torch.no_grad():
        for model in (pipe.unet, pipe.text_encoder):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(10)  # a delta big enough to show in an 8-bit image at every strength
    export_file(pipe, "sd1", run / "tiny.safetensors")
    return run


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.compare", *args], capture_output=True, text=True,
                          timeout=scaled(300))


def base_image(model: Path) -> np.ndarray:
    """The base model alone, through the trainer's sample code: what strength 0 must reproduce."""
    from training.contract.prompts import SamplePrompt
    from training.models.loading import load_base_model
    from training.run.samples import generate_samples

    base = load_base_model(str(model))
    prompt = SamplePrompt(PROMPT, "", SIZE, SIZE, SEED, 7.0, STEPS)
    out = Path(model).parent / "base-sample"
    [path] = generate_samples(base, base.unet, base.text_encoders, [prompt], "euler_a", 1, out, "base", 0, None,
                              torch.device("cpu"), torch.float32)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_grid_has_the_base_image_at_strength_zero_and_the_lora_beyond(run_dir, tiny_sd1):
    """Through the UI's path: the real ``python -m training.compare`` child, output under the run folder."""
    req = CompareRequest(run_dir, run_dir / "tiny.safetensors", PROMPT, SEED, STEPS, "0, 0.5, 1")
    path = run_compare(req, JobSupervisor(run_dir.parents[2]))
    assert path.parent == run_dir / "compare" and path.name.startswith("tiny_seed7_") and path.suffix == ".png"
    assert sorted(p.name for p in path.parent.iterdir()) == ["compare.log", path.name]  # no temp files or cells
    log = (run_dir / "compare" / "compare.log").read_text(encoding="utf-8")
    assert "-m training.compare --config" in log and "strength 0.5: done" in log and "Traceback" not in log

    grid = Image.open(path)
    assert grid.size == (3 * SIZE + 4 * MARGIN, SIZE + 2 * MARGIN + LABEL_HEIGHT)
    meta = json.loads(grid.text["loraforge_compare"])
    assert (meta["prompt"], meta["seed"], meta["strengths"], meta["lora"]) == (PROMPT, SEED, [0, 0.5, 1],
                                                                               "tiny.safetensors")
    cells = [np.asarray(grid.convert("RGB").crop(box)).astype(int) for box in cell_boxes(3, SIZE, SIZE)]
    assert np.array_equal(cells[0], base_image(tiny_sd1))  # strength 0 is the base model, bit for bit
    half, full = (np.abs(c - cells[0]).mean() for c in cells[1:])
    assert 0.5 < half < full, (half, full)  # the LoRA changes the image, more at full strength


@pytest.mark.parametrize(("change", "expected"), [
    ({"--lora": "{run}/missing.safetensors"}, "--lora {run}/missing.safetensors: file not found"),
    ({"--lora": "{run}/job.toml"}, "--lora job.toml: expected a .safetensors LoRA file"),
    ({"--config": "{run}/nope.toml"}, "{run}/nope.toml: config file not found"),
    ({"--strengths": "0,lots"}, "--strengths: 'lots' is not a number"),
    ({"--steps": "0"}, "--steps 0: use 1 to 150"),
    ({"--prompt": " "}, "--prompt is empty"),
    ({"--out": "{tmp}/grid.jpg"}, "--out grid.jpg: the grid is a .png file"),
], ids=["missing-lora", "not-safetensors", "missing-config", "strengths", "steps", "prompt", "out-suffix"])
def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, change, expected):
    args = {"--config": "{run}/job.toml", "--lora": "{run}/tiny.safetensors", "--prompt": PROMPT,
            "--out": "{tmp}/grid.png"} | change
    argv = [a for k, v in args.items() for a in (k, v.format(run=run_dir, tmp=tmp_path))]
    result = compare(*argv)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: {expected.format(run=run_dir)}")
    assert "\n" not in result.stderr.strip()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("family", "made_for"), [("sd2", "sd_v2"), ("sdxl", "sdxl_base_v1-0")])
def test_lora_of_another_family_is_refused_by_name(run_dir, tmp_path, family, made_for):
    export_file(lora_pipeline(family, 4, 2.0), family, tmp_path / f"{family}.safetensors")
    result = compare("--config", str(run_dir / "job.toml"), "--lora", str(tmp_path / f"{family}.safetensors"),
                     "--prompt", PROMPT, "--out", str(tmp_path / "grid.png"))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --lora {family}.safetensors: made for {made_for}")
    assert "loading base model" not in result.stderr  # refused from the headers, before torch and the model load
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "grid.png").exists()


def test_a_child_that_refuses_its_input_gives_its_reason_to_the_ui(run_dir, tmp_path):
    """The UI shows the child's own one-line reason, and the log keeps the whole output."""
    bad = tmp_path / "data" / "runs" / "tiny" / "20240101-130000"
    bad.mkdir(parents=True)
    (bad / "job.toml").write_text('pretrained_model_name_or_path = "x"\nnetwork_dims = 4\n', encoding="utf-8")
    (bad / "tiny.safetensors").write_bytes((run_dir / "tiny.safetensors").read_bytes())
    with pytest.raises(UserError) as err:
        run_compare(CompareRequest(bad, bad / "tiny.safetensors", PROMPT, SEED, 2, "0, 1"),
                    JobSupervisor(tmp_path / "data"))
    assert str(err.value) == "job.toml: unknown key 'network_dims' (did you mean 'network_dim'?)"
    assert "unknown key" in (bad / "compare" / "compare.log").read_text(encoding="utf-8")
    assert not list((bad / "compare").glob("*.png"))
