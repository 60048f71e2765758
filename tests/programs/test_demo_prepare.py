"""``python -m training.demo --prepare DIR`` in a real subprocess: what the UI's *Try the demo* runs first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from timing import scaled

from app.form import config_to_values
from app.model_check import detect_model_family
from training.contract.config_io import load_config
from training.demo import BUNDLED_DATASET, CONCEPT_FOLDER, DEMO_LABEL, MODEL_MARKER

ROOT = Path(__file__).resolve().parents[2]


def prepare(target: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.demo", "--prepare", str(target)], capture_output=True,
                          text=True, timeout=scaled(300), cwd=ROOT, env=env)


def without_torch(tmp_path: Path) -> dict[str, str]:
    """An environment in which importing torch fails (a sitecustomize refuses it), for a child that must not."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch must not be imported here')\n"
        "sys.meta_path.insert(0, Refuse())\n", encoding="utf-8")
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("demo") / "demo"
    out = prepare(target)
    assert out.returncode == 0, out.stderr
    assert "tiny model built" in out.stdout and "sample dataset copied" in out.stdout and DEMO_LABEL in out.stdout
    return target


def test_prepare_writes_model_dataset_and_config(demo_dir):
    family, line = detect_model_family(str(demo_dir / "model"))
    assert family == "sd1", line  # a diffusers folder the real loading path takes, recognised as SD1.x
    concept = demo_dir / "dataset" / CONCEPT_FOLDER
    images = sorted(concept.glob("*.png"))
    assert 6 <= len(images) <= 10
    for image in images:
        assert image.with_suffix(".txt").read_text(encoding="utf-8").startswith("lfbot, ")  # trigger word first

    cfg, notes = load_config(demo_dir / "demo.toml")
    assert not notes
    assert Path(cfg.pretrained_model_name_or_path) == demo_dir / "model"
    assert Path(cfg.train_data_dir) == demo_dir / "dataset"
    assert cfg.output_name == "demo" and cfg.mixed_precision == "no" and cfg.max_train_steps <= 100
    assert cfg.sample_prompts and cfg.sample_every_n_steps and cfg.max_train_steps // cfg.sample_every_n_steps >= 2
    assert cfg.save_every_n_steps and cfg.validation_every_n_steps
    assert cfg.sample_prompts.startswith("lfbot")
    assert config_to_values(cfg)["train_data_dir"] == str(demo_dir / "dataset")  # what the form shows
    assert "not a useful LoRA" in (demo_dir / "demo.toml").read_text(encoding="utf-8").splitlines()[0]


def test_second_prepare_reuses_everything_without_loading_torch(demo_dir, tmp_path):
    weights = demo_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    out = prepare(demo_dir, env=without_torch(tmp_path))  # a second Try the demo starts in a second, not after torch
    assert out.returncode == 0, out.stderr
    assert "tiny model already there" in out.stdout and "sample dataset already there" in out.stdout
    assert weights.stat().st_mtime_ns == before


def test_prepare_restores_missing_dataset_files_and_keeps_the_model(demo_dir):
    concept = demo_dir / "dataset" / CONCEPT_FOLDER
    missing = concept / "lfbot_03.txt"
    missing.unlink()
    marker = (demo_dir / "model" / MODEL_MARKER).stat().st_mtime_ns
    out = prepare(demo_dir)
    assert out.returncode == 0, out.stderr
    assert "sample dataset copied" in out.stdout and "tiny model already there" in out.stdout
    assert missing.read_bytes() == (BUNDLED_DATASET / "lfbot_03.txt").read_bytes()
    assert (demo_dir / "model" / MODEL_MARKER).stat().st_mtime_ns == marker


def test_prepare_into_a_file_fails_with_one_line(tmp_path):
    blocker = tmp_path / "demo"
    blocker.write_text("not a folder", encoding="utf-8")
    out = prepare(blocker)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: cannot prepare the demo in")
