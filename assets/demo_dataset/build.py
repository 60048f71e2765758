"""Rebuild the demo's sample dataset in ``lfbot/``: eight small drawings of a toy robot with booru-tag captions.

``python -m training.demo`` and the UI's *Try the demo* copy this folder into ``<demo dir>/dataset/2_lfbot/``. The
pictures are drawn here (Pillow only, deterministic) so the repository carries no third-party images; run once by a
developer, the generated ``.png``/``.txt`` files are committed:

    python assets/demo_dataset/build.py

Captions follow the anime-preset convention: the trigger word ``lfbot`` first (``keep_tokens = 1`` keeps it there
when tags are shuffled), then what is in the picture. Sizes mix square, portrait and landscape so the demo also
exercises aspect-ratio buckets. Together the files stay far below 300 KB.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "lfbot"
TRIGGER = "lfbot"


@dataclass(frozen=True)
class Shot:
    """One picture: canvas size, background, where the robot stands, its colour and pose, and the tags saying so."""

    name: str
    size: tuple[int, int]
    background: str  # "plain:<rgb hex>" or "outdoors"
    centre: tuple[float, float]  # robot centre as a share of width/height
    scale: float  # robot height as a share of the canvas height
    body: tuple[int, int, int]
    arms_up: bool
    tags: str


ORANGE, TEAL, YELLOW = (236, 128, 36), (40, 170, 160), (235, 200, 40)
SHOTS = [
    Shot("01", (128, 128), "plain:ffffff", (0.5, 0.55), 0.8, ORANGE, False,
         "orange body, standing, white background, simple background, full body"),
    Shot("02", (128, 128), "plain:cfe3ff", (0.5, 0.55), 0.8, ORANGE, True,
         "orange body, arms up, blue background, simple background, full body"),
    Shot("03", (128, 128), "outdoors", (0.4, 0.6), 0.6, ORANGE, False,
         "orange body, standing, outdoors, sky, grass, full body"),
    Shot("04", (128, 128), "plain:ffe0ec", (0.55, 0.5), 0.9, TEAL, True,
         "teal body, arms up, pink background, simple background, full body"),
    Shot("05", (72, 128), "plain:ffffff", (0.5, 0.55), 0.7, ORANGE, False,
         "orange body, standing, white background, simple background, full body, tall image"),
    Shot("06", (72, 128), "outdoors", (0.5, 0.6), 0.55, YELLOW, True,
         "yellow body, arms up, outdoors, sky, grass, full body, tall image"),
    Shot("07", (128, 72), "plain:e6ffe0", (0.3, 0.55), 0.85, TEAL, False,
         "teal body, standing, green background, simple background, full body, wide image"),
    Shot("08", (128, 72), "outdoors", (0.45, 0.55), 0.8, ORANGE, True,
         "orange body, arms up, outdoors, sky, grass, full body, wide image"),
]
COMMON_TAGS = "no humans, robot, antenna, round eyes"


def background(shot: Shot) -> Image.Image:
    w, h = shot.size
    if shot.background.startswith("plain:"):
        return Image.new("RGB", shot.size, "#" + shot.background.removeprefix("plain:"))
    img = Image.new("RGB", shot.size, (150, 200, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, int(h * 0.7), w, h), fill=(96, 170, 80))
    draw.ellipse((int(w * 0.72), int(h * 0.08), int(w * 0.9), int(h * 0.08 + w * 0.18)), fill=(255, 236, 150))
    return img


def draw_robot(img: Image.Image, shot: Shot) -> None:
    """A boxy robot: head with antenna and two round eyes, a body, arms down or raised, two legs."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    unit = shot.scale * h / 10  # the robot is 10 units tall
    cx, cy = shot.centre[0] * w, shot.centre[1] * h
    top = cy - 5 * unit
    dark = tuple(max(0, c - 90) for c in shot.body)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return (round(cx + x0 * unit), round(top + y0 * unit), round(cx + x1 * unit), round(top + y1 * unit))

    draw.line((*box(0, 0.6, 0, 0.6)[:2], *box(0, 1.6, 0, 1.6)[:2]), fill=dark, width=max(1, round(unit * 0.25)))
    draw.ellipse(box(-0.4, 0.2, 0.4, 1.0), fill=(230, 40, 40))
    draw.rounded_rectangle(box(-1.8, 1.5, 1.8, 4.2), radius=round(unit * 0.6), fill=shot.body, outline=dark)
    for side in (-1, 1):
        draw.ellipse(box(side * 0.9 - 0.45, 2.3, side * 0.9 + 0.45, 3.2), fill=(255, 255, 255), outline=dark)
        draw.ellipse(box(side * 0.9 - 0.2, 2.55, side * 0.9 + 0.2, 2.95), fill=(20, 20, 30))
        arm = box(side * 1.5, 4.9, side * 3.0, 2.9) if shot.arms_up else box(side * 1.5, 4.9, side * 2.8, 7.0)
        draw.line(arm, fill=dark, width=max(1, round(unit * 0.45)))
        draw.rectangle(box(side * 0.5 - 0.45, 7.6, side * 0.5 + 0.45, 10.0), fill=dark)
    draw.rounded_rectangle(box(-1.5, 4.4, 1.5, 7.8), radius=round(unit * 0.4), fill=shot.body, outline=dark)
    draw.rectangle(box(-0.7, 5.2, 0.7, 6.2), fill=(250, 250, 250), outline=dark)


def build(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for shot in SHOTS:
        img = background(shot)
        draw_robot(img, shot)
        path = out / f"lfbot_{shot.name}.png"
        img.save(path, optimize=True)
        path.with_suffix(".txt").write_text(f"{TRIGGER}, {COMMON_TAGS}, {shot.tags}\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    paths = build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    total = sum(p.stat().st_size + p.with_suffix(".txt").stat().st_size for p in paths)
    print(f"wrote {len(paths)} images with captions to {paths[0].parent} ({total / 1024:.1f} KB)")
