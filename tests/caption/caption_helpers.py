"""What the caption tests share besides fixtures: the tiny tagger's tags, images, and running the CLI.

Kept out of conftest.py so test files can import it by a name no other test folder uses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image
from timing import scaled

from training.caption.tiny import TinyTag

ROOT = Path(__file__).resolve().parents[2]

TAGGER_SIZE = 12  # the tiny tagger's input side: any other image size must be resized to it

# Channels count in the model's order. A WD14 model takes BGR, so channel 2 is red and channel 0 blue: a red image
# fed as RGB would score "blue theme" instead of "red theme". Scores are channel mean / 255, so an image fed in 0-1
# instead of 0-255 scores about 0 everywhere.
TAGS = [
    TinyTag("general", 9, bias=0.9),                    # ratings: never written unless asked
    TinyTag("sensitive", 9, bias=0.1),
    TinyTag("red_theme", 0, channel=2),
    TinyTag("blue_theme", 0, channel=0),
    TinyTag("green_theme", 0, channel=1),
    TinyTag("character_x", 4, channel=2, weight=0.9 / 255),  # 0.9 on red: above the character threshold 0.85
    TinyTag("^_^", 0, bias=0.8),                          # a kaomoji keeps its underscore
    TinyTag("long_hair", 0, bias=0.6),
    TinyTag("faint_tag", 0, bias=0.3),                    # under the general threshold 0.35
    TinyTag("almost_character", 4, bias=0.6),            # over the general threshold, under the character one
    TinyTag("hat_(object)", 0, bias=0.4),
]
RED_SQUARE_TAGS = ["red theme", "character x", "^_^", "long hair", "hat (object)"]


def red(size=(TAGGER_SIZE, TAGGER_SIZE)) -> Image.Image:
    return Image.new("RGB", size, (255, 0, 0))


def run_caption(*args, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python -m training.caption`` in a child process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "training.caption", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=scaled(timeout), **kwargs)
