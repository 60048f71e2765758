"""Load an image the way the user sees it, fit it to a bucket, and turn it into a tensor for the VAE."""

from __future__ import annotations

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
    try:
        with Image.open(path) as raw:
            img = ImageOps.exif_transpose(raw)
            img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from e
    return _to_rgb(img)


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


def fit_to_bucket(img: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Resize keeping the aspect ratio so that ``img`` covers ``bucket`` (w, h), then center-crop to it.

    Returns the cropped image and ``(crop_top, crop_left)`` in resized coordinates (SDXL conditions on them).
    """
    (rw, rh), (top, left) = crop_geometry(img.size, bucket)
    if (rw, rh) != img.size:
        # LANCZOS: sharp when shrinking (the usual case) and acceptable for the rare upscale without bucketing.
        img = img.resize((rw, rh), Image.Resampling.LANCZOS)
    bw, bh = bucket
    if (rw, rh) != (bw, bh):
        img = img.crop((left, top, left + bw, top + bh))
    return img, (top, left)


def to_tensor(img: Image.Image, flip: bool) -> torch.Tensor:
    """RGB PIL image -> CHW float32 tensor in [-1, 1] (the VAE's input range), mirrored left-right if ``flip``."""
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
