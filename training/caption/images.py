"""The images of a dataset folder and how a captioner sees them.

Torch-free on purpose (``training.data.images`` imports torch), so tagging starts without loading torch.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from training.contract.errors import UserError
from training.data.folder import IMAGE_EXTENSIONS

WHITE = (255, 255, 255)


def find_images(root: Path) -> list[Path]:
    """Every image under ``root``, kohya's ``N_concept`` folders and any deeper ones, in a stable order. Hidden
    folders (``.latent_cache``, ``.git``) are left out."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise UserError(f"dataset folder {root} {what}: give the folder that holds the images "
                        "(or its '10_name' concept folders)")
    found = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found)


def open_rgb(path: Path) -> Image.Image:
    """The image as the user sees it: EXIF orientation applied and transparency composited on white, in RGB.
    Raises ``OSError`` with a short reason when the file cannot be decoded."""
    try:
        with Image.open(path) as raw:
            img = ImageOps.exif_transpose(raw)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OSError(f"cannot read image: {reason}") from e
    return on_white(img)


def on_white(img: Image.Image) -> Image.Image:
    """RGB with any alpha composited on white (a plain convert would show what hides under transparent pixels)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")  # 16-bit grey: scale, do not clip, to 8 bits
    if img.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and not (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
