"""The demo's bundled sample dataset, its config, and the machine-readable environment report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image
from timing import scaled

from training.__main__ import env_report
from training.contract.config_io import config_from_dict
from training.demo import BUNDLED_DATASET, demo_settings

ROOT = Path(__file__).resolve().parents[2]


def test_bundled_dataset_is_small_captioned_and_varied():
    images = sorted(BUNDLED_DATASET.glob("*.png"))
    assert 6 <= len(images) <= 10
    total = sum(p.stat().st_size for p in BUNDLED_DATASET.iterdir())
    assert total < 300 * 1024
    shapes = set()
    for path in images:
        with Image.open(path) as img:
            assert min(img.size) >= 64 and max(img.size) <= 128, f"{path.name}: {img.size}"
            shapes.add("square" if img.width == img.height else "tall" if img.height > img.width else "wide")
        tags = [t.strip() for t in path.with_suffix(".txt").read_text(encoding="utf-8").split(",")]
        assert tags[0] == "lfbot" and len(tags) >= 5 and all(tags)  # booru style: trigger word, then tags
    assert shapes == {"square", "tall", "wide"}  # the demo exercises aspect-ratio buckets


def test_committed_images_are_what_the_build_script_draws(tmp_path):
    subprocess.run([sys.executable, str(BUNDLED_DATASET.parent / "build.py"), str(tmp_path)], check=True,
                   capture_output=True, timeout=scaled(60))
    written = sorted(tmp_path.glob("*.png"))
    assert sorted(p.name for p in written) == sorted(p.name for p in BUNDLED_DATASET.glob("*.png"))
    for path in written:
        committed = BUNDLED_DATASET / path.name
        with Image.open(path) as fresh, Image.open(committed) as kept:
            assert fresh.convert("RGB").tobytes() == kept.convert("RGB").tobytes(), path.name
        assert path.with_suffix(".txt").read_text() == committed.with_suffix(".txt").read_text()


def test_demo_config_is_valid_and_sized_for_a_cpu(tmp_path):
    cfg, notes = config_from_dict(demo_settings(tmp_path / "model", tmp_path / "data", tmp_path / "run"), "demo")
    assert not notes
    assert cfg.mixed_precision == "no" and max(cfg.resolution_wh) <= 128 and cfg.max_train_steps <= 100
    assert cfg.keep_tokens == 1 and cfg.shuffle_caption  # the trigger word stays first


def test_env_report_words_each_case():
    base = {"python": "3.11.7", "system": "Linux", "cuda": None, "gpus": [], "mps": False, "error": None}
    assert "torch is not installed" in env_report(base | {"torch": None})
    assert "no CUDA GPU: training runs on the CPU" in env_report(base | {"torch": "2.13.0"})
    gpu = base | {"torch": "2.4.1", "cuda": "12.4",
                  "gpus": [{"name": "NVIDIA GeForce RTX 4090", "memory_gib": 23.6, "bf16": True}]}
    assert "cuda 12.4: NVIDIA GeForce RTX 4090, 23.6 GiB, bf16 yes" in env_report(gpu)


def test_env_report_json_from_the_cli():
    out = subprocess.run([sys.executable, "-m", "training", "--env-report", "--json"], capture_output=True,
                         text=True, timeout=scaled(120), cwd=ROOT, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"python", "torch", "cuda", "gpus", "mps", "error"} <= set(info)
    assert info["python"].count(".") == 2 and isinstance(info["gpus"], list)
