from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Never reach a model hub from tests: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_image_dataset, save_tiny_pipeline
from tool_files import tiny_ckpt  # noqa: F401  (the LoRA tools tests' tiny LDM checkpoints, a fixture)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    """A tiny SD1-like diffusers folder (epsilon prediction)."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd1") / "model", "sd1")


@pytest.fixture(scope="session")
def tiny_sd2v(tmp_path_factory) -> Path:
    """A tiny SD2-like diffusers folder with v-prediction."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd2v") / "model", "sd2", "v_prediction")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL-like diffusers folder: two text encoders, text_time micro-conditioning, depth-2 transformer level."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sdxl") / "model", "sdxl")


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """A kohya dataset with one concept folder, repeats 2, three captioned 64 px images."""
    return make_image_dataset(tmp_path / "data")
