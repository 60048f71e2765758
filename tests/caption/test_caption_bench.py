"""``python -m training.caption.bench`` runs end to end on its tiny models and prints images/s per batch size."""

from __future__ import annotations

import re
import subprocess
import sys

from caption_helpers import ROOT
from timing import scaled


def test_the_bench_prints_images_per_second_of_both_models():
    result = subprocess.run([sys.executable, "-m", "training.caption.bench", "--images", "2", "--batch-sizes", "1",
                             "2"], capture_output=True, text=True, cwd=ROOT, timeout=scaled(300))
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"^(tagger|captioner) +batch (\d): +[\d.]+ images/s", result.stdout, re.M)
    assert lines == [("tagger", "1"), ("tagger", "2"), ("captioner", "1"), ("captioner", "2")], result.stdout
