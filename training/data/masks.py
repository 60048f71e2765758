"""Loss masks (``masked_loss``, ``alpha_mask``): per image, how much each latent pixel's loss counts.

A mask comes from one of two places, as in sd-scripts: a mask image in ``conditioning_data_dir`` with the training
image's name (its red channel; white learns, black is ignored), or the training image's own alpha channel. It goes
through the very geometry of the image: resized to the image's resized size, cropped by the same window, mirrored
when the image is, then averaged over each latent pixel's area (8x8 image pixels). Computing it per item from that
geometry keeps it aligned with cached latents too (a cache entry is also one (image, bucket, flip)).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from training.contract.errors import UserError
from training.data.folder import IMAGE_EXTENSIONS
from training.data.images import open_upright

if TYPE_CHECKING:
    from training.contract.config import TrainConfig
    from training.data.folder import ImageItem

LATENT_FACTOR = 8  # image pixels per latent pixel along each side, for every SD, SD2 and SDXL VAE
Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], bool]  # resized (w, h), (top, left), bucket, flip


class MaskSource:
    """Each image's latent-size mask: from ``masks`` (image path -> mask file) when given, else from the alpha
    channel. An image without a mask file, or without alpha, is learned everywhere (a mask of ones)."""

    def __init__(self, masks: dict[Path, Path] | None) -> None:
        self.masks = masks
        self._memo: dict[tuple[Path, Geometry], torch.Tensor] = {}

    def latent_mask(self, path: Path, resized: tuple[int, int], crop_top_left: tuple[int, int],
                    bucket: tuple[int, int], flip: bool) -> torch.Tensor:
        """[h, w] float32 in [0, 1], h and w the bucket's size / 8."""
        key = (Path(path), (resized, crop_top_left, bucket, flip))
        if key not in self._memo:
            self._memo[key] = self._make(Path(path), resized, crop_top_left, bucket, flip)
        return self._memo[key]

    def _make(self, path: Path, resized: tuple[int, int], crop_top_left: tuple[int, int], bucket: tuple[int, int],
              flip: bool) -> torch.Tensor:
        channel = self._channel(path)
        if channel is None:
            return torch.ones((bucket[1] // LATENT_FACTOR, bucket[0] // LATENT_FACTOR))
        top, left = crop_top_left
        # BOX: an area average, so a hard-edged mask stays within [0, 1] (LANCZOS rings past the edges).
        channel = channel.resize(resized, Image.Resampling.BOX).crop((left, top, left + bucket[0], top + bucket[1]))
        if flip:
            channel = channel.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(channel, dtype=np.float32) / 255.0)
        return to_latent_size(pixels)

    def _channel(self, path: Path) -> Image.Image | None:
        """The mask as one 8-bit channel at its own size, or None when the image is to be learned everywhere."""
        if self.masks is not None:
            mask_file = self.masks.get(path)
            return None if mask_file is None else open_upright(mask_file, "mask image").convert("RGB").getchannel("R")
        image = open_upright(path)
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        return image.convert("RGBA").getchannel("A") if has_alpha else None


def to_latent_size(pixels: torch.Tensor) -> torch.Tensor:
    """[H, W] -> [H/8, W/8]: each latent pixel gets the mean of its 8x8 block (area interpolation)."""
    return torch.nn.functional.avg_pool2d(pixels[None, None], LATENT_FACTOR)[0, 0]


def mask_files(folder: Path, items: Sequence[ImageItem], train_data_dir: Path) -> dict[Path, Path]:
    """Each training image's mask in ``folder``: the same relative path (concept subfolders mirrored) or, failing
    that, the same file name stem directly in ``folder``, with any image extension. Every image needs one."""
    if not folder.is_dir():
        raise UserError(f"conditioning_data_dir {folder} is not a folder: make it a folder of mask images named "
                        "like the training images")
    found, missing = {}, []
    for item in items:
        mask = _find_mask(folder, Path(item.path), train_data_dir)
        if mask is None:
            missing.append(Path(item.path).name)
        else:
            found[Path(item.path)] = mask
    if missing:
        raise UserError(f"conditioning_data_dir {folder} has no mask for {len(missing)} image(s) (first: "
                        f"{missing[0]}): add a mask image with the same name for each, or turn masked_loss off")
    return found


def _find_mask(folder: Path, image: Path, train_data_dir: Path) -> Path | None:
    try:
        places = [folder / image.resolve().parent.relative_to(train_data_dir.resolve()), folder]
    except ValueError:  # an image outside train_data_dir: only the flat layout can name it
        places = [folder]
    for place in places:
        for ext in sorted(IMAGE_EXTENSIONS):
            for candidate in (place / f"{image.stem}{ext}", place / f"{image.stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def mask_source(cfg: TrainConfig, items: Sequence[ImageItem]) -> MaskSource | None:
    """The run's masks, or None when the loss is not masked. masked_loss takes conditioning_data_dir's masks when
    set, else the alpha channel; alpha_mask alone masks by alpha too (sd-scripts does both)."""
    if cfg.masked_loss and cfg.conditioning_data_dir:
        folder = Path(cfg.conditioning_data_dir).expanduser()
        return MaskSource(mask_files(folder, items, Path(cfg.train_data_dir).expanduser()))
    if cfg.masked_loss or cfg.alpha_mask:
        return MaskSource(None)
    return None
