"""Dataset folder scan and image loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import make_image_dataset

from training.contract.errors import UserError
from training.data.folder import scan_dataset
from training.data.images import fit_to_bucket, load_image, to_tensor


def _img(path: Path, size=(32, 24), color=(10, 200, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def test_repeats_concepts_and_metadata(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"10_alice": 2, "3_bob": 1})
    scan = scan_dataset(root)
    assert [(c.name, c.repeats, c.image_count) for c in scan.concepts] == [("alice", 10, 2), ("bob", 3, 1)]
    assert scan.num_train_images == 23
    assert scan.dataset_dirs() == {
        "10_alice": {"n_repeats": 10, "img_count": 2},
        "3_bob": {"n_repeats": 3, "img_count": 1},
    }
    assert scan.tag_frequency()["10_alice"] == {"alice": 2, "circle": 2, "variant 0": 1, "variant 1": 1}
    item = scan.items[0]
    assert item.concept == "alice" and item.repeats == 10 and item.size == (64, 64)
    assert item.caption == "alice, circle, variant 0"
    assert scan.warnings == [] and scan.skipped == []


def test_flat_folder_is_one_concept(tmp_path):
    root = tmp_path / "my art"
    _img(root / "a.PNG")
    _img(root / "b.JpEg")
    scan = scan_dataset(root)
    assert [(c.name, c.repeats, c.image_count) for c in scan.concepts] == [("my art", 1, 2)]
    assert {i.caption for i in scan.items} == {"my art"}


def test_pointing_at_the_concept_folder_itself_uses_its_repeats_and_says_so(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"10_mychar": 2}) / "10_mychar"
    scan = scan_dataset(root)
    assert [(c.name, c.repeats) for c in scan.concepts] == [("mychar", 10)]
    assert scan.num_train_images == 20
    assert any("10_mychar" in w and str(root.parent) in w for w in scan.warnings)


def test_wrongly_named_subfolders_and_stray_images_are_warned_by_name(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"5_cat": 1})
    _img(root / "mydog" / "x.png")
    _img(root / "stray.png")
    _img(root / "0_zero" / "z.png")
    scan = scan_dataset(root)
    assert [c.name for c in scan.concepts] == ["cat"]
    text = "\n".join(scan.warnings)
    assert "mydog" in text and "stray.png" in text and "0_zero" in text


def test_missing_captions_fall_back_to_concept_name_with_one_warning(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"2_fox": 3}, captions=False)
    (root / "2_fox" / "img_1.caption").write_text("other format")
    scan = scan_dataset(root)
    assert [i.caption for i in scan.items] == ["fox"] * 3
    caption_warnings = [w for w in scan.warnings if "caption" in w]
    assert len(caption_warnings) == 1
    w = caption_warnings[0]
    assert "3 image(s)" in w and "img_0.png" in w and "img_2.png" in w and ".caption" in w


def test_caption_bom_and_whitespace(tmp_path):
    root = tmp_path / "data"
    _img(root / "1_x" / "a.png")
    (root / "1_x" / "a.txt").write_bytes("\ufeffred hair,\n  blue   eyes\r\n".encode())
    assert scan_dataset(root).items[0].caption == "red hair, blue eyes"
    (root / "1_x" / "a.cap").write_text("from cap", encoding="utf-8")
    assert scan_dataset(root, caption_extension="cap").items[0].caption == "from cap"


def test_corrupt_and_truncated_images_are_skipped_and_named(tmp_path):
    root = make_image_dataset(tmp_path / "data", {"1_ok": 2})
    (root / "1_ok" / "garbage.png").write_bytes(b"this is not a png at all")
    good = (root / "1_ok" / "img_0.png").read_bytes()
    (root / "1_ok" / "truncated.png").write_bytes(good[: len(good) // 2])
    scan = scan_dataset(root)
    assert len(scan.items) == 2
    assert sorted(p.name for p, _ in scan.skipped) == ["garbage.png", "truncated.png"]
    assert all(reason for _, reason in scan.skipped)
    assert any("garbage.png" in w and "truncated.png" in w for w in scan.warnings)


def test_empty_or_missing_folder_is_a_user_error_naming_it(tmp_path):
    empty = tmp_path / "empty"
    (empty / "10_nothing").mkdir(parents=True)
    with pytest.raises(UserError, match="no training images found in") as e:
        scan_dataset(empty)
    assert str(empty) in str(e.value) and "\n" not in str(e.value)
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as e:
        scan_dataset(missing)
    assert str(missing) in str(e.value)


def test_only_corrupt_images_is_still_a_user_error(tmp_path):
    (tmp_path / "d" / "1_x").mkdir(parents=True)
    (tmp_path / "d" / "1_x" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(UserError, match="no training images"):
        scan_dataset(tmp_path / "d")


def test_exif_rotated_jpeg_comes_out_rotated(tmp_path):
    path = tmp_path / "1_x" / "rot.jpg"
    path.parent.mkdir()
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(path, exif=exif, quality=95)
    assert scan_dataset(tmp_path).items[0].size == (20, 40)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    r, _, b = loaded.getpixel((10, 2))  # after a clockwise turn the left stripe is at the top
    assert b > 200 and r < 60
    assert loaded.getpixel((10, 37))[0] > 200


def test_transparency_becomes_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out.getpixel((2, 2)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 0, 0)
    la = Image.new("LA", (2, 2), (0, 0))
    la.save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_fit_to_bucket_covers_then_center_crops():
    img = Image.new("RGB", (300, 200))
    out, (top, left) = fit_to_bucket(img, (128, 128))
    assert out.size == (128, 128)
    assert (top, left) == (0, (192 - 128) // 2)  # resized to 192x128 first
    out, (top, left) = fit_to_bucket(Image.new("RGB", (100, 400)), (64, 128))
    assert out.size == (64, 128) and left == 0 and top == (256 - 128) // 2


def test_to_tensor_range_and_flip():
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (0, 0, 0))
    img.putpixel((1, 0), (255, 255, 255))
    t = to_tensor(img, flip=False)
    assert t.shape == (3, 1, 2) and t.dtype == torch.float32
    assert t[:, 0, 0].tolist() == [-1.0] * 3 and t[:, 0, 1].tolist() == [1.0] * 3
    assert torch.equal(to_tensor(img, flip=True), t.flip(-1))
