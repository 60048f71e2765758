"""Import uploaded images, captions or .zip files into a managed dataset ``<datasets>/<name>/<repeats>_<concept>/``.

Only images and their ``.txt`` captions are taken; every name is rebuilt from sanitized parts, so no path in a zip
can point outside the dataset (zip-slip), and existing files are never overwritten (a clash gets ``_2``). Limits on
the number of files, on the unpacked size and on a zip member's compression ratio stop a zip bomb before anything
is written; every image is opened with Pillow as it lands, so a file that is no image, or one whose pixel count is a
decompression bomb, is named in the import message and left out.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image

from training.contract.errors import UserError
from training.contract.services import CONCEPT_DIR, IMAGE_EXTENSIONS

MAX_FILES = 2000
MAX_BYTES = 2 * 2**30  # unpacked; a 200-image dataset of large PNGs is well under 1 GiB
# A zip of images barely compresses (PNG and JPEG are compressed already); a member that unpacks to over 100 times
# its packed size is a bomb, once it is large enough to matter.
MAX_RATIO = 100
RATIO_FLOOR = 8 * 2**20
# Pillow's own decompression-bomb bound (about 89 megapixels, 9459x9459): far past any training resolution.
MAX_PIXELS = 89_478_485
MAX_NAME = 64
CAPTION_EXT = ".txt"
_UNSAFE = re.compile(r"[^\w\- .]+")


@dataclass(frozen=True)
class Entry:
    """One file to import: where it goes (concept folder, unit key) and how to read it."""

    concept_dir: str
    unit: tuple[str, str]  # (source folder, stem): an image and its caption share it, so they keep one name
    stem: str
    suffix: str
    size: int
    open: Callable[[], BinaryIO]


@dataclass
class ImportResult:
    root: Path
    images: int = 0
    captions: int = 0
    folders: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)

    def message(self) -> str:
        folders = ", ".join(sorted(self.folders))
        text = f"Imported {self.images} image(s) and {self.captions} caption(s) into {self.root} ({folders})"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + ", ".join(self.skipped[:8])
            text += f" and {len(self.skipped) - 8} more" if len(self.skipped) > 8 else ""
        return text


def sanitize(text: str | None, what: str) -> str:
    """A safe single path component: letters, digits, space, '-', '_', '.'; never hidden, never '..'."""
    name = _UNSAFE.sub("_", (text or "").strip()).strip(" ._")[:MAX_NAME].strip(" ._")
    if not name:
        raise UserError(f"{what} is empty or has no usable characters: use letters, digits, '-' or '_'")
    return name


def import_files(files: list[Path], datasets_dir: Path, name: str, repeats: int | float | None,
                 concept: str) -> ImportResult:
    """Copy ``files`` (images, .txt captions, .zip archives of them) into the dataset ``name``."""
    if not files:
        raise UserError("no files uploaded: drop images, their .txt captions or a .zip of them")
    if repeats is None or int(repeats) != repeats or not 1 <= int(repeats) <= 1000:
        raise UserError(f"repeats must be a whole number from 1 to 1000, got {repeats}")
    root = datasets_dir / sanitize(name, "dataset name")
    default_dir = f"{int(repeats)}_{sanitize(concept, 'concept name')}"
    result = ImportResult(root)
    archives: list[zipfile.ZipFile] = []
    try:
        entries = _collect(files, default_dir, result.skipped, archives)
        _check_limits(entries)
        _write_all(entries, root, result)
    finally:
        for archive in archives:
            archive.close()
    if not result.images:
        _remove_if_empty(root)
        skipped = f" (skipped: {', '.join(result.skipped[:8])})" if result.skipped else ""
        raise UserError("no images in the upload: use jpg, jpeg, png, webp or bmp files, or a .zip of them" + skipped)
    return result


def discard_uploads(files: list[Path], upload_dir: Path) -> None:
    """Delete the web server's copies of uploaded files once imported (or refused), with the folder each one got;
    a path outside ``upload_dir`` is never touched."""
    for path in files:
        path = Path(path)
        if not path.resolve().is_relative_to(upload_dir.resolve()):
            continue
        path.unlink(missing_ok=True)
        if path.parent.resolve() != upload_dir.resolve():
            _remove_if_empty(path.parent)


def _remove_if_empty(folder: Path) -> None:
    """A dataset folder this import made but filled with nothing would show up as an empty dataset."""
    with contextlib.suppress(OSError):  # not there, or holds files
        folder.rmdir()


def _collect(files: list[Path], default_dir: str, skipped: list[str], archives: list) -> list[Entry]:
    entries: list[Entry] = []
    for path in map(Path, files):
        suffix = path.suffix.lower()
        if suffix == ".zip":
            entries += _zip_entries(path, default_dir, skipped, archives)
        elif suffix in IMAGE_EXTENSIONS or suffix == CAPTION_EXT:
            entries.append(Entry(default_dir, ("", path.stem), path.stem, suffix, path.stat().st_size,
                                 lambda p=path: p.open("rb")))
        else:
            skipped.append(f"{path.name} (not an image or caption)")
    return entries


def _zip_entries(path: Path, default_dir: str, skipped: list[str], archives: list) -> list[Entry]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise UserError(f"{path.name} is not a readable zip file: re-create it, or upload the images") from None
    archives.append(archive)
    _refuse_bomb(path, archive)
    entries = []
    for info in archive.infolist():
        member = PurePosixPath(info.filename.replace("\\", "/"))
        if ".." in member.parts:
            skipped.append(f"{info.filename} (path leaves the zip's folder)")
            continue
        if info.is_dir() or any(part.startswith(".") or part == "__MACOSX" for part in member.parts):
            continue  # folders, macOS resource forks, hidden files: nothing a user meant to train on
        suffix = member.suffix.lower()
        if suffix not in IMAGE_EXTENSIONS and suffix != CAPTION_EXT:
            skipped.append(f"{member.name} (not an image or caption)")
            continue
        if info.flag_bits & 0x1:
            skipped.append(f"{member.name} (encrypted)")
            continue
        entries.append(Entry(_concept_of(member, default_dir), (str(member.parent), member.stem), member.stem,
                             suffix, info.file_size, lambda a=archive, i=info: a.open(i)))
    return entries


def _refuse_bomb(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse the whole archive, before anything is unpacked, when its sizes say it is a zip bomb."""
    members = archive.infolist()
    total = sum(info.file_size for info in members)
    if total > MAX_BYTES:
        raise UserError(f"{path.name} unpacks to {_size(total)} (the limit is {_size(MAX_BYTES)}): split it, or copy "
                        "the folder and type its path instead")
    for info in members:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > MAX_RATIO:
            raise UserError(f"{path.name} looks like a zip bomb: {info.filename} unpacks to {_size(info.file_size)} "
                            f"from {_size(info.compress_size)} ({ratio:.0f}:1; images compress far less): refused. "
                            "If it really is an image, upload it without the zip")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot go into a dataset (not an image, too many pixels, damaged), or None when it is fine.
    Reads the header and checks the file's structure without decoding the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # answered below, with the size
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    return f"{width}x{height} px, over the limit of {MAX_PIXELS // 10**6} megapixels"
                img.verify()
    except Image.DecompressionBombError:
        return f"over twice the limit of {MAX_PIXELS // 10**6} megapixels: a decompression bomb"
    except Image.UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as err:
        return f"damaged image: {err}"
    return None


def _concept_of(member: PurePosixPath, default_dir: str) -> str:
    """A zip laid out the kohya way (``10_cat/img.png``) keeps its concept folders; anything else goes to the
    concept from the form."""
    for part in reversed(member.parts[:-1]):
        m = CONCEPT_DIR.match(part)
        if m and int(m.group(1)) > 0:
            return f"{int(m.group(1))}_{sanitize(m.group(2), 'concept folder ' + part)}"
    return default_dir


def _check_limits(entries: list[Entry]) -> None:
    if len(entries) > MAX_FILES:
        raise UserError(f"too many files in the upload ({len(entries)}; the limit is {MAX_FILES}): split it")
    total = sum(e.size for e in entries)
    if total > MAX_BYTES:
        raise UserError(f"the upload unpacks to {_size(total)} (the limit is {_size(MAX_BYTES)}): "
                        "split it, or copy the folder and type its path instead")


def _write_all(entries: list[Entry], root: Path, result: ImportResult) -> None:
    has_image = {(e.concept_dir, e.unit) for e in entries if e.suffix != CAPTION_EXT}
    names: dict[tuple[str, tuple[str, str]], str] = {}
    taken: dict[str, set[str]] = {}
    refused: set[tuple[str, tuple[str, str]]] = set()
    for e in sorted(entries, key=lambda e: (e.concept_dir, e.unit, e.suffix == CAPTION_EXT)):
        key = (e.concept_dir, e.unit)
        if key not in has_image:
            result.skipped.append(f"{e.stem}{e.suffix} (caption without its image)")
            continue
        if key in refused:
            continue  # the caption of an image named in the skipped list already
        folder = root / e.concept_dir
        if key not in names:
            stems = taken.setdefault(e.concept_dir, _existing_stems(folder))
            names[key] = _unique(_safe_stem(e.stem), stems)
        problem = _copy_atomic(e, folder / f"{names[key]}{e.suffix}")
        if problem:
            refused.add(key)
            result.skipped.append(f"{e.stem}{e.suffix} ({problem})")
            continue
        result.folders.add(e.concept_dir)
        if e.suffix == CAPTION_EXT:
            result.captions += 1
        else:
            result.images += 1


def _safe_stem(stem: str) -> str:
    try:
        return sanitize(stem, "file name")
    except UserError:  # a name of only symbols, e.g. "???.png"
        return "image"


def _existing_stems(folder: Path) -> set[str]:
    return {p.stem.lower() for p in folder.iterdir()} if folder.is_dir() else set()


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... (compared without case: Windows and macOS folders ignore it)."""
    name, n = stem, 1
    while name.lower() in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name.lower())
    return name


def _copy_atomic(entry: Entry, target: Path) -> str | None:
    """Copy ``entry`` to ``target`` through a temp file; an image is checked there first, and its problem returned
    (nothing written) when it is not one the dataset can use."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, entry.open() as src:
            shutil.copyfileobj(src, out, 1 << 20)
        problem = image_problem(Path(tmp)) if entry.suffix != CAPTION_EXT else None
        if problem:
            Path(tmp).unlink()
            _remove_if_empty(target.parent)  # a concept folder made for this file alone
            return problem
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return None
    except (zipfile.BadZipFile, RuntimeError) as err:  # CRC mismatch, unsupported compression
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot unpack {entry.stem}{entry.suffix} from the zip ({err}): re-create the zip") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
