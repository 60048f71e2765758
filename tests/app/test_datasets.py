"""The UI's dataset helpers on real folders: validation, listing, thumbnails, caption edits, bulk tools, imports."""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from app import dataset_import
from app.dataset_import import import_files, sanitize
from app.datasets import (
    THUMB_PX,
    add_trigger,
    caption_tags,
    find_replace,
    list_images,
    page_of,
    read_caption,
    remove_tag,
    resolve_folder,
    save_caption,
    step_in,
    tag_frequency,
    thumbnail,
    with_tag,
)
from training.contract.errors import UserError


def img(path: Path, size=(64, 48), colour=(200, 40, 40), caption: str | None = None, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def png_bytes(size=(32, 32), colour=(0, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# --- folders


def test_folder_validation_says_what_is_wrong(tmp_path):
    datasets = tmp_path / "datasets"
    with pytest.raises(UserError, match="no folder given"):
        resolve_folder("  ", datasets)
    with pytest.raises(UserError, match=r"folder not found: .*nowhere"):
        resolve_folder(str(tmp_path / "nowhere"), datasets)
    file = img(tmp_path / "a.png")
    with pytest.raises(UserError, match="is a file: give the folder"):
        resolve_folder(str(file), datasets)
    (datasets / "mine").mkdir(parents=True)
    assert resolve_folder("mine", datasets) == (datasets / "mine").resolve()  # a plain name is a managed dataset
    assert resolve_folder(f'"{tmp_path}"', datasets) == tmp_path.resolve()  # pasted with quotes


def test_listing_follows_the_trainers_folder_rules(tmp_path):
    img(tmp_path / "10_cat" / "b.png")
    img(tmp_path / "10_cat" / "a.jpg")
    img(tmp_path / "2_dog" / "c.webp")
    img(tmp_path / "notes" / "x.png")  # not '<repeats>_<name>': the trainer ignores it
    listing = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in listing.images] == ["10_cat/a.jpg", "10_cat/b.png",
                                                                           "2_dog/c.webp"]
    assert listing.concepts == [("10_cat", 10, 2), ("2_dog", 2, 1)]
    assert "ignored 1 folder(s)" in listing.notes[0] and "notes" in listing.notes[0]
    assert "3 image(s) in 2 concept folder(s)" in listing.summary()

    flat = tmp_path / "flat"
    img(flat / "one.png")
    assert [p.name for p in list_images(flat).images] == ["one.png"]

    (tmp_path / "empty" / "5_x").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no training images in .*empty: put images"):
        list_images(tmp_path / "empty")


def test_pages_clamp_to_the_images(tmp_path):
    images = [tmp_path / f"{i}.png" for i in range(50)]
    assert page_of(images, 1, 24)[1:] == (1, 3)
    shown, page, pages = page_of(images, 9, 24)
    assert (len(shown), page, pages) == (2, 3, 3)
    assert page_of([], 1, 24) == ([], 1, 1)


# --- thumbnails


def test_thumbnails_are_small_cached_and_refreshed(tmp_path):
    thumbs = tmp_path / "data" / "cache" / "thumbs"
    source = img(tmp_path / "big.png", size=(1200, 600))
    first = thumbnail(source, thumbs)
    assert first.parent == thumbs and first.suffix == ".jpg"
    with Image.open(first) as t:
        assert max(t.size) == THUMB_PX and t.size == (256, 128)
    written = first.stat().st_mtime_ns
    assert thumbnail(source, thumbs) == first and first.stat().st_mtime_ns == written  # cached, not redrawn

    img(source, size=(300, 600), colour=(0, 0, 0))
    os.utime(source, ns=(written + 10**9, written + 10**9))
    assert thumbnail(source, thumbs) != first  # the image changed: new key


def test_transparent_and_unreadable_images_get_usable_thumbnails(tmp_path):
    thumbs = tmp_path / "thumbs"
    clear = img(tmp_path / "clear.png", colour=(0, 0, 0, 0), mode="RGBA")
    with Image.open(thumbnail(clear, thumbs)) as t:
        assert t.convert("RGB").getpixel((5, 5)) > (240, 240, 240)  # white, as a viewer shows it, not black
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    placeholder = thumbnail(broken, thumbs)
    assert placeholder.name == "_unreadable.jpg" and placeholder.parent == thumbs


# --- captions


def test_save_caption_writes_beside_the_image_and_keeps_permissions(tmp_path):
    image = img(tmp_path / "10_a" / "x.png", caption="old")
    caption = image.with_suffix(".txt")
    caption.chmod(0o664)
    assert save_caption(image, "  new text, tag \n", ".txt") == caption
    assert caption.read_text(encoding="utf-8") == "new text, tag"
    assert stat.S_IMODE(caption.stat().st_mode) == 0o664
    assert not [p for p in caption.parent.iterdir() if p.name.endswith(".tmp")]

    fresh = img(tmp_path / "10_a" / "y.png")
    save_caption(fresh, "brand new", ".caption")
    assert fresh.with_suffix(".caption").read_text() == "brand new"
    assert stat.S_IMODE(fresh.with_suffix(".caption").stat().st_mode) == 0o644


def test_save_caption_refuses_what_it_cannot_read(tmp_path):
    image = img(tmp_path / "x.png")
    image.with_suffix(".txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=r"x\.txt is not UTF-8"):
        save_caption(image, "overwrite", ".txt")
    assert image.with_suffix(".txt").read_bytes() == b"caf\xe9"
    with pytest.raises(UserError, match="gone"):
        save_caption(tmp_path / "deleted.png", "text", ".txt")


def test_read_caption_accepts_a_bom_and_a_bare_extension(tmp_path):
    image = img(tmp_path / "x.png")
    image.with_suffix(".txt").write_bytes("\ufeffsks, hat".encode())
    assert read_caption(image) == read_caption(image, "txt") == read_caption(image, "") == "sks, hat"
    assert read_caption(img(tmp_path / "none.png")) == ""
    with pytest.raises(UserError, match="caption_extension 'a/b' is not a file extension"):
        read_caption(image, "a/b")


def bulk_folder(tmp_path: Path) -> list[Path]:
    return [img(tmp_path / "a.png", caption="1girl, red hat"),
            img(tmp_path / "b.png", caption="SKS, 1girl, sksx"),
            img(tmp_path / "c.png")]


def test_add_trigger_puts_it_first_once(tmp_path):
    images = bulk_folder(tmp_path)
    result = add_trigger(images, " sks, ")
    assert (result.changed, result.total) == (2, 3)
    assert [read_caption(p) for p in images] == ["sks, 1girl, red hat", "SKS, 1girl, sksx", "sks"]
    assert add_trigger(images, "sks").changed == 0
    assert "0 of 3 caption(s)" in add_trigger(images, "sks").message("Added 'sks' to")
    with pytest.raises(UserError, match="no trigger word"):
        add_trigger(images, " , ")


def test_remove_tag_takes_whole_tags_only(tmp_path):
    images = bulk_folder(tmp_path)
    result = remove_tag(images, "sks")
    assert result.changed == 1
    assert [read_caption(p) for p in images] == ["1girl, red hat", "1girl, sksx", ""]
    assert not images[2].with_suffix(".txt").exists()  # no caption file is created by a removal


def test_find_replace_counts_changed_files_and_skips_non_utf8(tmp_path):
    images = bulk_folder(tmp_path)
    images[2].with_suffix(".txt").write_bytes(b"\xff\xfe hat")
    result = find_replace(images, "hat", "cap")
    assert result.changed == 1 and result.unreadable == ["c.txt"]
    assert read_caption(images[0]) == "1girl, red cap"
    assert "left 1 non-UTF-8 file(s) alone: c.txt" in result.message("Replaced 'hat' in")
    with pytest.raises(UserError, match="nothing to find"):
        find_replace(images, "", "x")


def test_tag_frequency_counts_images_per_tag(tmp_path):
    images = bulk_folder(tmp_path)
    img(tmp_path / "d.png", caption="1girl, 1girl, smile")
    assert tag_frequency([*images, tmp_path / "d.png"]) == [("1girl", 3), ("red hat", 1), ("sks", 1), ("sksx", 1),
                                                           ("smile", 1)]



def test_caption_tags_are_stripped_in_order_and_once():
    assert caption_tags(" blue hair, 1girl ,, Blue Hair, smile,") == ["blue hair", "1girl", "smile"]
    assert caption_tags("") == [] and caption_tags(" , ") == []


def test_with_tag_finds_whole_tags_in_any_case_and_skips_unreadable_captions(tmp_path):
    images = bulk_folder(tmp_path)  # "1girl, red hat", "SKS, 1girl, sksx", no caption
    broken = img(tmp_path / "d.png")
    broken.with_suffix(".txt").write_bytes(b"\xff\xfe sks")
    assert with_tag([*images, broken], " sks ") == [images[1]]
    assert with_tag(images, "1GIRL") == images[:2]
    assert with_tag(images, "red") == []  # part of a tag is not the tag


def test_step_in_walks_only_the_filtered_images():
    order = ["a", "b", "c", "d", "e"]
    walk = ["b", "d"]
    assert step_in(walk, order, None, +1) == 0  # nothing selected: the first
    assert step_in(walk, order, "b", +1) == 1
    assert step_in(walk, order, "d", +1) == 1  # the last stays the last
    assert step_in(walk, order, "b", -1) == 0
    assert step_in([], order, "b", +1) is None
    # An image outside the walk (its caption lost the tag) steps to its nearest walked neighbour in folder order.
    assert step_in(walk, order, "c", +1) == 1 and step_in(walk, order, "c", -1) == 0
    assert step_in(walk, order, "a", +1) == 0 and step_in(walk, order, "a", -1) == 0
    assert step_in(walk, order, "e", +1) == 1 and step_in(walk, order, "e", -1) == 1


# --- imports


def test_import_images_and_captions_into_a_managed_dataset(tmp_path):
    up = tmp_path / "upload"
    files = [img(up / "one.png", caption="a cat"), up / "one.txt", img(up / "two.jpg"), up / "notes.pdf"]
    files[-1].write_bytes(b"%PDF")
    datasets = tmp_path / "datasets"
    result = import_files(files, datasets, " My Set! ", 8, "mi/ke")
    concept = datasets / "My Set" / "8_mi_ke"
    assert result.root == datasets / "My Set"
    assert sorted(p.name for p in concept.iterdir()) == ["one.png", "one.txt", "two.jpg"]
    assert (concept / "one.txt").read_text() == "a cat"
    assert (result.images, result.captions) == (2, 1)
    assert "notes.pdf (not an image or caption)" in result.message()

    again = import_files([up / "one.png", up / "one.txt"], datasets, "My Set", 8, "mi/ke")
    assert sorted(p.name for p in concept.iterdir()) == ["one.png", "one.txt", "one_2.png", "one_2.txt", "two.jpg"]
    assert again.images == 1  # a clash never overwrites: the image and its caption move to a new name together


def test_zip_import_is_slip_safe_and_keeps_kohya_folders(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/5_fox/f.png", png_bytes())
        zf.writestr("data/5_fox/f.txt", "fox")
        zf.writestr("../../evil.png", png_bytes())
        zf.writestr("/abs/root.png", png_bytes())
        zf.writestr("__MACOSX/data/._f.png", b"junk")
        zf.writestr("data/readme.md", "hello")
        zf.writestr("data/orphan.txt", "no image")
    datasets = tmp_path / "datasets"
    result = import_files([archive], datasets, "zipped", 3, "misc")
    root = datasets / "zipped"
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["datasets/zipped/3_misc/root.png", "datasets/zipped/5_fox/f.png",
                       "datasets/zipped/5_fox/f.txt", "set.zip"]  # nothing outside the dataset, no junk
    assert result.root == root and result.folders == {"3_misc", "5_fox"}
    assert "readme.md (not an image or caption)" in result.message()
    assert "../../evil.png (path leaves the zip's folder)" in result.message()
    assert "orphan.txt (caption without its image)" in result.message()


def test_import_limits_and_bad_input_give_one_line(tmp_path, monkeypatch):
    datasets = tmp_path / "datasets"
    good = img(tmp_path / "a.png")
    with pytest.raises(UserError, match="no files uploaded"):
        import_files([], datasets, "x", 1, "c")
    with pytest.raises(UserError, match="repeats must be a whole number"):
        import_files([good], datasets, "x", 0, "c")
    with pytest.raises(UserError, match="dataset name is empty"):
        import_files([good], datasets, "../..", 1, "c")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK not really")
    with pytest.raises(UserError, match=r"broken\.zip is not a readable zip file"):
        import_files([broken], datasets, "x", 1, "c")
    caption_only = tmp_path / "only.txt"
    caption_only.write_text("a caption")
    with pytest.raises(UserError, match="no images in the upload"):
        import_files([caption_only], datasets, "x", 1, "c")

    monkeypatch.setattr(dataset_import, "MAX_FILES", 2)
    with pytest.raises(UserError, match="too many files in the upload \\(3; the limit is 2\\)"):
        import_files([good, img(tmp_path / "b.png"), img(tmp_path / "c.png")], datasets, "x", 1, "c")
    monkeypatch.setattr(dataset_import, "MAX_BYTES", 100)
    with pytest.raises(UserError, match="unpacks to"):
        import_files([good], datasets, "x", 1, "c")
    assert not datasets.exists()  # refused before anything was written


def test_sanitize_keeps_names_inside_one_folder():
    assert sanitize("  ..hidden ", "name") == "hidden"
    assert sanitize("a/b\\c:d", "name") == "a_b_c_d"
    assert sanitize("Ünïcode ok-1", "name") == "Ünïcode ok-1"
    assert len(sanitize("x" * 300, "name")) == 64


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims ``width`` x ``height`` pixels with almost no data: a decompression bomb's
    first bytes, which is all Pillow reads before it knows the size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b""))
            + _chunk(b"IEND", b""))


def zip_of_zeros(path: Path, member: str, mib: int) -> Path:
    """A zip whose one member unpacks to ``mib`` MiB of zeros from a few KiB: the shape of a zip bomb."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(member, "w") as out:
        for _ in range(mib):
            out.write(bytes(2**20))
    return path


def test_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path):
    bomb = zip_of_zeros(tmp_path / "bomb.zip", "photos/big.png", 64)
    assert bomb.stat().st_size < 2**20  # 64 MiB from under 1 MiB
    datasets = tmp_path / "datasets"
    with pytest.raises(UserError, match=r"bomb\.zip looks like a zip bomb: photos/big\.png unpacks to 64\.0 MiB"):
        import_files([img(tmp_path / "ok.png"), bomb], datasets, "x", 1, "c")
    assert not datasets.exists()


def test_zip_over_the_size_limit_is_refused_whole(tmp_path, monkeypatch):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", png_bytes())
        zf.writestr("notes.bin", os.urandom(4096))  # not imported, but still unpacked size a bomb could hide in
    monkeypatch.setattr(dataset_import, "MAX_BYTES", 4096)
    with pytest.raises(UserError, match=r"set\.zip unpacks to 4\.\d KiB \(the limit is 4\.0 KiB\)"):
        import_files([archive], tmp_path / "datasets", "x", 1, "c")
    assert not (tmp_path / "datasets").exists()


def test_each_image_is_checked_at_import_and_bad_ones_are_named(tmp_path):
    up = tmp_path / "upload"
    up.mkdir()
    good = img(up / "good.png", caption="fine")
    (up / "fake.png").write_bytes(b"this is text, not a picture")
    (up / "fake.txt").write_text("caption of a non-image")
    (up / "huge.png").write_bytes(png_claiming(40000, 40000))
    (up / "big.png").write_bytes(png_claiming(10000, 10000))
    whole = png_bytes((64, 64))
    archive = up / "more.jpg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cut.png", whole[: len(whole) // 2])
        zf.writestr("inner.png", whole)
    files = [good, up / "good.txt", up / "fake.png", up / "fake.txt", up / "huge.png", up / "big.png", archive]
    result = import_files(files, tmp_path / "datasets", "checked", 2, "c")

    concept = tmp_path / "datasets" / "checked" / "2_c"
    assert sorted(p.name for p in concept.iterdir()) == ["good.png", "good.txt", "inner.png"]
    assert (result.images, result.captions) == (2, 1)
    message = result.message()
    assert "fake.png (not an image)" in message
    assert "big.png (10000x10000 px, over the limit of 89 megapixels)" in message
    assert "huge.png (over twice the limit of 89 megapixels: a decompression bomb)" in message
    assert "cut.png (damaged image: " in message
    assert "fake.txt" not in message  # the caption goes with its image, which is named already


def test_an_upload_of_only_bad_images_names_them_and_leaves_no_folder(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"text")
    with pytest.raises(UserError, match=r"no images in the upload.*\(skipped: fake\.png \(not an image\)\)"):
        import_files([tmp_path / "fake.png"], tmp_path / "datasets", "x", 1, "c")
    assert list((tmp_path / "datasets").iterdir()) == []


def test_discard_uploads_deletes_only_the_servers_copies(tmp_path):
    uploads = tmp_path / "cache" / "gradio"
    copy = uploads / "3f9a" / "photo.png"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(png_bytes())
    own = img(tmp_path / "mine" / "photo.png")
    dataset_import.discard_uploads([copy, own], uploads)
    assert not copy.exists() and not copy.parent.exists() and uploads.is_dir()
    assert own.is_file()  # outside the upload folder: never touched
