"""Load an image the way the user sees it, fit it to a bucket, and turn it into a tensor for the VAE."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from training.contract.errors import UserError

_WHITE = (255, 255, 255)


def load_image(path: Path | str) -> Image.Image:
    """Open ``path`` as upright RGB: EXIF orientation applied, transparency flattened onto white.

    White, not black, because that is what the artist sees in an image viewer; PIL's plain ``convert("RGB")`` drops
    alpha and exposes whatever colour the transparent pixels happen to hold (often black).
    """
    return _to_rgb(open_upright(path))


def open_upright(path: Path | str, what: str = "image") -> Image.Image:
    """The file as the user sees it (EXIF orientation applied), in its own mode; unreadable is a one-line error."""
    try:
        with Image.open(path) as raw:
            img = ImageOps.exif_transpose(raw)
            img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from e
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: convert("L") would clip everything above 255 to white; scale to 8 bits instead.
        img = img.point(lambda v: v / 256).convert("L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def crop_geometry(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return ``((resized_w, resized_h), (crop_top, crop_left))`` for fitting an image of ``size`` into ``bucket``.

    Separate from ``fit_to_bucket`` so the dataset can report SDXL's crop coordinates for cached latents without
    opening the image. The scale makes the image just cover the bucket, so only one axis is ever cropped.
    """
    w, h = size
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    return (rw, rh), ((rh - bh) // 2, (rw - bw) // 2)


def fit_to_bucket(img: Image.Image, bucket: tuple[int, int],
                  rng: random.Random | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Resize keeping the aspect ratio so that ``img`` covers ``bucket`` (w, h), then crop to it: at the center, or
    with ``rng`` (kohya's ``random_crop``) at an offset drawn uniformly along the axis that is too long.

    Returns the cropped image and ``(crop_top, crop_left)`` in resized coordinates (SDXL conditions on them).
    """
    (rw, rh), (top, left) = crop_geometry(img.size, bucket)
    bw, bh = bucket
    if rng is not None:
        top, left = rng.randint(0, rh - bh), rng.randint(0, rw - bw)
    return _resized(img, (rw, rh)).crop((left, top, left + bw, top + bh)), (top, left)


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    # LANCZOS: sharp when shrinking (the usual case) and acceptable for the rare upscale without bucketing.
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


# --- kohya's face crop: the face's box comes from the file name, "name_<cx>_<cy>_<w>_<h>.png" ----------------------

Face = tuple[int, int, int, int]  # center x, center y, width, height in the image's pixels


def face_from_name(path: Path | str) -> Face | None:
    """The face box a file name ends with (kohya's convention, written by its face-detection tool), else None."""
    tokens = Path(path).stem.split("_")
    if len(tokens) < 5:
        return None
    try:
        cx, cy, w, h = (int(t) for t in tokens[-4:])
    except ValueError:
        return None
    return (cx, cy, w, h) if cx > 0 and max(w, h) > 0 else None


def face_crop_scale(size: tuple[int, int], face: Face, target: tuple[int, int], face_range: tuple[float, float],
                    rng: random.Random) -> float:
    """The resize factor that makes the crop's short side ``face_range`` (min, max) face sizes, drawn uniformly in
    that range, never upscaling for it, and never below what covers ``target`` (kohya's rule; kohya stops on an
    image smaller than the target, here that image is upscaled just enough)."""
    face_size = max(face[2], face[3])
    short = min(target)
    cover = max(target[0] / size[0], target[1] / size[1])
    low = max(cover, min(1.0, short / (face_size * face_range[1])))
    high = max(low, min(1.0, short / (face_size * face_range[0])))
    return low if low >= high else rng.uniform(low, high)


def face_crop_start(face_at: int, face_size: int, length: int, target: int, jitter: bool, random_crop: bool,
                    rng: random.Random) -> int:
    """Where the crop starts along one axis: centered on the face; with ``random_crop`` moved by up to the longer
    side of the face, more often a little than a lot (the sum of two uniform draws), so the background is learnt too;
    else, when the range is a range and the face is not tiny, moved by at most a twentieth of the face."""
    start = face_at - target // 2
    if random_crop:
        reach = max(length - face_at, face_at)
        start += rng.randint(0, reach) + rng.randint(0, reach) - reach
    elif jitter:
        start += rng.randint(-(face_size // 20), face_size // 20)
    return max(0, min(start, length - target))


def crop_around_face(img: Image.Image, face: Face, target: tuple[int, int], face_range: tuple[float, float],
                     random_crop: bool,
                     rng: random.Random) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """kohya's ``face_crop_aug_range``: resize by ``face_crop_scale`` and crop ``target`` (w, h) around the face.
    Returns the crop, ``(crop_top, crop_left)`` in resized coordinates and the resized size."""
    scale = face_crop_scale(img.size, face, target, face_range, rng)
    resized = (max(target[0], int(img.width * scale + 0.5)), max(target[1], int(img.height * scale + 0.5)))
    face_size = max(face[2], face[3])
    jitter = face_range[0] != face_range[1] and face_size > min(target) // 10 and face_size >= 40
    top = face_crop_start(int(face[1] * scale + 0.5), face_size, resized[1], target[1], jitter, random_crop, rng)
    left = face_crop_start(int(face[0] * scale + 0.5), face_size, resized[0], target[0], jitter, random_crop, rng)
    return _resized(img, resized).crop((left, top, left + target[0], top + target[1])), (top, left), resized


# --- kohya's colour augmentation ----------------------------------------------------------------------------------

HUE_SHIFT_LIMIT = 8.0  # in OpenCV's hue units (half degrees), as kohya gives it: up to 16 degrees either way
GAMMA_RANGE = (0.95, 1.05)
COLOR_AUG_SHARE = 0.33  # of the samples that get a colour change at all


@dataclass(frozen=True)
class ColorChange:
    kind: str  # "hue": rotate the hue by ``amount`` half degrees; "gamma": pixel value v -> v ** amount (0..255)
    amount: float


def draw_color_change(rng: random.Random) -> ColorChange | None:
    """kohya's draws: a third of the samples change, half of those by a hue shift, the other half by a gamma."""
    if rng.random() > COLOR_AUG_SHARE:
        return None
    if rng.random() > 0.5:
        return ColorChange("hue", rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT))
    return ColorChange("gamma", rng.uniform(*GAMMA_RANGE))


def apply_color_change(img: Image.Image, change: ColorChange) -> Image.Image:
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    if change.kind == "hue":
        out = np.rint(shift_hue(rgb, change.amount * 2.0))
    else:
        # On the 0..255 values, not on 0..1 as a display gamma would be: kohya's formula, which also brightens or
        # darkens the image a little (and clips the brightest values at 1.05).
        out = np.floor(np.clip(rgb ** change.amount, 0, 255))
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def shift_hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue of ``rgb`` (H, W, 3 floats) by ``degrees`` in HSV: each pixel keeps its largest and its
    smallest channel (HSV's value and saturation), so only the colour moves, not the brightness."""
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    chroma = high - low
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.select([chroma == 0, high == r, high == g],
                    [0.0, ((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4)  # sextants 0..6
    hue = (hue + degrees / 60.0) % 6
    # Back from (hue, high, low): the channel in the middle is interpolated along the sextant's edge.
    middle = low + chroma * (1 - np.abs(hue % 2 - 1))
    sextant = np.floor(hue).astype(int)
    order = np.array([(0, 1, 2), (1, 0, 2), (2, 0, 1), (2, 1, 0), (1, 2, 0), (0, 2, 1)])[sextant]  # rank per channel
    levels = np.stack([high, middle, low], axis=-1)
    return np.take_along_axis(levels, order, axis=-1)


def to_tensor(img: Image.Image, flip: bool) -> torch.Tensor:
    """RGB PIL image -> CHW float32 tensor in [-1, 1] (the VAE's input range), mirrored left-right if ``flip``."""
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
