"""Loss masks (masked_loss, alpha_mask, conditioning_data_dir): each image's mask follows the pixels' crop and flip,
down to latent size, from the alpha channel or a mask image of the same name, cached latents or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.data.dataset import TrainDataset, collate
from training.data.folder import scan_dataset
from training.data.latents import LatentCache
from training.data.masks import MaskSource, mask_files, mask_source
from training.data.subset import SubsetOptions
from training.demo import _tiny_vae


def rgba(width: int, height: int, opaque_columns: range) -> Image.Image:
    """Red where opaque (the columns given), fully transparent elsewhere."""
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[:, opaque_columns] = (255, 0, 0, 255)
    return Image.fromarray(pixels, "RGBA")


def block_mean(indicator: torch.Tensor) -> torch.Tensor:
    """The mean of each 8x8 block: what one latent pixel covers."""
    h, w = indicator.shape
    return indicator.reshape(h // 8, 8, w // 8, 8).mean(dim=(1, 3))


@pytest.fixture
def wide_dataset(tmp_path):
    """A 101x64 image (cropped to a 64x64 bucket from column 18) opaque on columns 18-41 of the file, and a square
    one opaque on its left half."""
    concept = tmp_path / "data" / "1_thing"
    concept.mkdir(parents=True)
    rgba(101, 64, range(18, 42)).save(concept / "wide.png")
    rgba(64, 64, range(0, 32)).save(concept / "square.png")
    return tmp_path / "data"


def dataset(root, **kw) -> TrainDataset:
    ds = TrainDataset(scan_dataset(root), resolution=64, min_reso=64, max_reso=64,
                      options=SubsetOptions(flip_aug=True), seed=1, **kw)
    ds.masks = MaskSource(None)
    return ds


def test_an_alpha_mask_is_the_opaque_share_of_each_latent_pixel(tmp_path):
    rgba(64, 64, range(0, 20)).save(tmp_path / "left.png")
    source = MaskSource(None)
    expected = torch.zeros(8, 8)
    expected[:, :2], expected[:, 2] = 1.0, 0.5  # columns 0-19: two full latent columns and half of the third
    plain = source.latent_mask(tmp_path / "left.png", (64, 64), (0, 0), (64, 64), False)
    mirrored = source.latent_mask(tmp_path / "left.png", (64, 64), (0, 0), (64, 64), True)
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(mirrored, expected.flip(-1))


def test_masks_follow_the_crop_and_flip_of_the_pixels(wide_dataset):
    ds = dataset(wide_dataset)
    flips = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            sample = ds[index]
            opaque = (sample["pixel_values"][1] < 0).float()  # red (G = -1) where opaque, white where transparent
            torch.testing.assert_close(sample["mask"], block_mean(opaque))
            flips.add((sample["path"].endswith("wide.png"), bool(sample["crop_top_left"][1] != 18)))
    assert {(True, False), (True, True)} <= flips  # the wide image was seen both plain and mirrored


def test_masks_with_cached_latents_are_those_of_the_pixels(wide_dataset):
    vae = _tiny_vae().eval()
    plain, cached = dataset(wide_dataset), dataset(wide_dataset)
    cache = LatentCache(vae, None, "cpu", torch.float32)
    cache.encode_all(cached.latent_jobs())
    cached.attach_latents(cache)
    for epoch in range(3):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        batch = collate([cached[i] for i in range(len(cached))])
        expected = torch.stack([plain[i]["mask"] for i in range(len(plain))])
        torch.testing.assert_close(batch["mask"], expected)
        assert batch["mask"].shape == (len(cached), 8, 8) and batch["latents"].shape[-2:] == (8, 8)


def test_mask_images_are_found_by_name_and_their_red_channel_is_the_mask(tmp_path):
    data = tmp_path / "data" / "2_cat"
    data.mkdir(parents=True)
    Image.new("RGB", (64, 64), "blue").save(data / "a.png")
    Image.new("RGB", (64, 64), "blue").save(data / "b.jpg")
    masks = tmp_path / "masks"
    (masks / "2_cat").mkdir(parents=True)
    left_white = np.zeros((32, 32), dtype=np.uint8)
    left_white[:, :16] = 255
    Image.fromarray(left_white, "L").save(masks / "2_cat" / "a.png")  # mirrored layout; half the image's size
    Image.new("RGB", (64, 64), (128, 0, 0)).save(masks / "b.png")  # flat layout, another extension
    items = scan_dataset(tmp_path / "data").items
    found = mask_files(masks, items, tmp_path / "data")
    assert {p.name: m.relative_to(masks).as_posix() for p, m in found.items()} == {"a.png": "2_cat/a.png",
                                                                                   "b.jpg": "b.png"}
    source = MaskSource(found)
    a = source.latent_mask(data / "a.png", (64, 64), (0, 0), (64, 64), False)
    torch.testing.assert_close(a, torch.tensor([[1.0] * 4 + [0.0] * 4] * 8))  # stretched to the image's size
    b = source.latent_mask(data / "b.jpg", (64, 64), (0, 0), (64, 64), False)
    torch.testing.assert_close(b, torch.full((8, 8), 128 / 255))


def test_a_missing_mask_or_folder_is_one_clear_line(tmp_path):
    data = tmp_path / "data" / "1_x"
    data.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(data / "lonely.png")
    (tmp_path / "masks").mkdir()
    items = scan_dataset(tmp_path / "data").items
    with pytest.raises(UserError, match=r"has no mask for 1 image\(s\) \(first: lonely.png\)"):
        mask_files(tmp_path / "masks", items, tmp_path / "data")
    with pytest.raises(UserError, match="is not a folder"):
        mask_files(tmp_path / "nope", items, tmp_path / "data")


def test_the_config_chooses_the_mask_source(tmp_path):
    data = tmp_path / "data" / "1_x"
    data.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(data / "one.png")
    (tmp_path / "masks").mkdir()
    Image.new("L", (64, 64), 255).save(tmp_path / "masks" / "one.png")
    items = scan_dataset(tmp_path / "data").items
    base = {"train_data_dir": str(tmp_path / "data")}
    assert mask_source(TrainConfig(**base), items) is None
    assert mask_source(TrainConfig(**base, alpha_mask=True), items).masks is None  # alpha
    from_folder = mask_source(TrainConfig(**base, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"),
                                          alpha_mask=True), items)
    assert list(from_folder.masks.values()) == [tmp_path / "masks" / "one.png"]  # the folder wins, as in sd-scripts
    # An image without alpha is learned everywhere.
    ones = mask_source(TrainConfig(**base, alpha_mask=True), items).latent_mask(items[0].path, (64, 64), (0, 0),
                                                                                (64, 64), False)
    torch.testing.assert_close(ones, torch.ones(8, 8))
