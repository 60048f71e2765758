"""Tiny caption models, built once per session into real model folders (no downloads), and small datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from caption_helpers import TAGGER_SIZE, TAGS, red

from training.caption.tiny import save_tiny_blip, save_tiny_florence2, save_tiny_tagger


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory) -> Path:
    return save_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny", TAGS, size=TAGGER_SIZE)


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "blip-tiny")


@pytest.fixture(scope="session")
def tiny_florence2(tmp_path_factory) -> Path:
    return save_tiny_florence2(tmp_path_factory.mktemp("florence2") / "florence2-tiny")


@pytest.fixture
def red_dataset(tmp_path) -> Path:
    """kohya layout: two concept folders, one nested deeper, three red images in all."""
    root = tmp_path / "data"
    for rel in ("10_alice/a.png", "10_alice/b.jpg", "3_bob/more/c.png"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        red((30, 30)).save(path)
    return root
