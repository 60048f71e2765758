"""Dataset folders for the UI: validate, list images with captions, thumbnails, caption edits and bulk tools.

Torch-free and Gradio-free (the tab wires these to components). Every user mistake is a ``UserError`` with one line
naming the folder or file and what to do. Caption files are rewritten atomically, so a crash mid-save never leaves
a half-written caption. Uploads are imported by ``app.dataset_import``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from training.contract.atomic import atomic_path, write_atomic
from training.contract.errors import UserError
from training.contract.services import concept_folders, image_files

DATASETS_DIR = "datasets"  # managed datasets live in <data dir>/datasets/<name>/<repeats>_<concept>/
THUMBS_DIR = Path("cache") / "thumbs"
PREVIEWS_DIR = Path("cache") / "previews"
THUMB_PX = 256
PREVIEW_PX = 1024  # the large preview beside the caption editor
PAGE_SIZE = 24


@dataclass
class Listing:
    """The images a folder trains on (the scan's folder rules, without decoding any image) and notes on what the
    rules left out."""

    folder: Path
    images: list[Path]
    concepts: list[tuple[str, int, int]]  # (folder name, repeats, images)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{name} ×{repeats}: {n}" for name, repeats, n in self.concepts)
        return f"{len(self.images)} image(s) in {len(self.concepts)} concept folder(s) ({parts})"


def resolve_folder(text: str | None, datasets_dir: Path) -> Path:
    """The folder a user typed, as an absolute path. A relative name means a managed dataset under datasets_dir."""
    text = (text or "").strip().strip('"')
    if not text:
        raise UserError("no folder given: type the folder that holds your images, or pick a dataset below")
    path = Path(text).expanduser()
    path = path if path.is_absolute() else datasets_dir / path
    path = path.resolve()
    if not path.exists():
        raise UserError(f"folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"{path} is a file: give the folder that holds the images")
    return path


def list_images(folder: Path) -> Listing:
    """Images in ``folder`` the way the trainer finds them: ``<repeats>_<concept>`` subfolders, or images directly
    in the folder. Raises UserError when nothing would train."""
    notes: list[str] = []
    try:
        concepts = concept_folders(folder, notes)
        found = [(path, repeats, image_files(path)) for path, _name, repeats in concepts]
    except PermissionError as err:
        raise UserError(f"cannot read {err.filename or folder}: permission denied") from None
    images = [img for _, _, files in found for img in files]
    if not images:
        raise UserError(f"no training images in {folder}: put images (jpg, png, webp, bmp) in subfolders named "
                        "like '10_mychar' (10 = repeats) or directly in the folder")
    return Listing(folder, images, [(p.name, r, len(files)) for p, r, files in found if files], notes)


def caption_path(image: Path, caption_extension: str = ".txt") -> Path:
    """The caption file beside ``image``; "txt" is taken as ".txt", an empty extension as the usual ".txt"."""
    ext = (caption_extension or "").strip() or ".txt"
    ext = ext if ext.startswith(".") else "." + ext
    if ext == "." or any(c in ext for c in "/\\ "):
        raise UserError(f"caption_extension '{caption_extension}' is not a file extension: use one like .txt")
    return image.with_suffix(ext)


def read_caption(image: Path, caption_extension: str = ".txt") -> str:
    """The caption file's text as saved ("" when there is none). Raises UserError for a file that is not UTF-8."""
    path = caption_path(image, caption_extension)
    try:
        return path.read_text(encoding="utf-8-sig") if path.is_file() else ""
    except UnicodeDecodeError:
        raise UserError(f"caption {path.name} is not UTF-8 text: re-save it as UTF-8 in a text editor") from None


def save_caption(image: Path, text: str, caption_extension: str = ".txt") -> Path:
    """Write the caption beside its image, atomically; refuses a caption file this UI could not read (the edit
    would replace text the user never saw)."""
    if not image.is_file():
        raise UserError(f"image {image.name} is gone from {image.parent}: reload the folder")
    read_caption(image, caption_extension)
    path = caption_path(image, caption_extension)
    write_atomic(path, (text or "").strip())  # keeps the old file's permissions
    return path


# --- bulk caption tools


@dataclass
class BulkResult:
    changed: int
    total: int
    unreadable: list[str] = field(default_factory=list)

    def message(self, verb: str) -> str:
        text = f"{verb} {self.changed} of {self.total} caption(s)"
        if self.unreadable:
            text += f"; left {len(self.unreadable)} non-UTF-8 file(s) alone: " + ", ".join(self.unreadable[:5])
        return text


def _tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def caption_tags(caption: str) -> list[str]:
    """The caption's comma-separated tags, stripped, in their order; a tag written twice (any case) once."""
    seen: set[str] = set()
    tags = []
    for tag in (t.strip() for t in (caption or "").split(",")):
        if tag and tag.lower() not in seen:
            seen.add(tag.lower())
            tags.append(tag)
    return tags


def _bulk(images: list[Path], ext: str, edit: Callable[[str, bool], str | None]) -> BulkResult:
    """Apply ``edit(caption, exists) -> new caption or None`` to every image's caption; write only changes."""
    result = BulkResult(0, len(images))
    for image in images:
        try:
            old = read_caption(image, ext)
        except UserError:
            result.unreadable.append(caption_path(image, ext).name)
            continue
        new = edit(old, caption_path(image, ext).is_file())
        if new is not None and new != old:
            write_atomic(caption_path(image, ext), new)
            result.changed += 1
    return result


def add_trigger(images: list[Path], word: str, ext: str = ".txt") -> BulkResult:
    """Put ``word`` first in every caption that does not already have it as a tag (an image without a caption
    file gets one holding just the word)."""
    word = word.strip().strip(",").strip()
    if not word:
        raise UserError("no trigger word given: type the word to add, e.g. 'sks' or 'mychar'")

    def edit(caption: str, _exists: bool) -> str | None:
        if word.lower() in (t.lower() for t in _tags(caption)):
            return None
        return f"{word}, {caption.strip()}" if caption.strip() else word

    return _bulk(images, ext, edit)


def remove_tag(images: list[Path], tag: str, ext: str = ".txt") -> BulkResult:
    """Drop ``tag`` wherever it is a whole comma-separated tag (any case); other tags keep their order."""
    tag = tag.strip().strip(",").strip()
    if not tag:
        raise UserError("no tag given: type the tag or trigger word to remove")

    def edit(caption: str, exists: bool) -> str | None:
        tags = _tags(caption)
        kept = [t for t in tags if t.lower() != tag.lower()]
        return ", ".join(kept) if exists and len(kept) != len(tags) else None

    return _bulk(images, ext, edit)


def find_replace(images: list[Path], find: str, replace: str, ext: str = ".txt") -> BulkResult:
    """Plain-text replace (case-sensitive, no patterns) in every existing caption."""
    if not find:
        raise UserError("nothing to find: type the text to replace")
    return _bulk(images, ext, lambda caption, exists: caption.replace(find, replace) if exists else None)


def tag_frequency(images: list[Path], ext: str = ".txt") -> list[tuple[str, int]]:
    """How many images carry each comma-separated tag (lower-cased), most common first."""
    counts: Counter[str] = Counter()
    for image in images:
        try:
            counts.update({t.lower() for t in caption_tags(read_caption(image, ext))})
        except UserError:
            continue
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def with_tag(images: list[Path], tag: str, ext: str = ".txt") -> list[Path]:
    """The images whose caption has ``tag`` as a whole comma-separated tag (any case), in their order; an
    unreadable caption has no tags."""
    wanted = tag.strip().lower()
    found = []
    for image in images:
        try:
            tags = caption_tags(read_caption(image, ext))
        except UserError:
            continue
        if wanted in (t.lower() for t in tags):
            found.append(image)
    return found


def step_in(walk: list[str], order: list[str], current: str | None, delta: int) -> int | None:
    """The index in ``walk`` (a filtered part of ``order``) of the image ``delta`` (+1 or -1) away from ``current``,
    kept inside the walk; None when the walk is empty. With no current image: the first. A current image outside the
    walk (its caption lost the filter's tag) steps to the walk's next or previous image in folder order."""
    if not walk:
        return None
    if current is None:
        return 0
    if current in walk:
        return min(max(0, walk.index(current) + delta), len(walk) - 1)
    rank = {image: i for i, image in enumerate(order)}
    here = rank.get(current, -1)
    after = [i for i, image in enumerate(walk) if rank.get(image, -1) > here]
    if delta > 0:
        return after[0] if after else len(walk) - 1
    return after[0] - 1 if after and after[0] > 0 else (0 if after else len(walk) - 1)


# --- gallery pages and thumbnails


def page_of(images: list[Path], page: int, size: int = PAGE_SIZE) -> tuple[list[Path], int, int]:
    """(images on the page, the page number clamped to 1..pages, pages)."""
    pages = max(1, -(-len(images) // size))
    page = min(max(1, int(page or 1)), pages)
    return images[(page - 1) * size : page * size], page, pages


def thumbnail(image: Path, thumbs_dir: Path, px: int = THUMB_PX) -> Path:
    """A JPEG of ``image`` at most ``px`` a side under thumbs_dir (inside the data dir, the only folder the browser
    may read images from), keyed by path, modification time and size so an edited image gets a fresh one.
    Unreadable images get a placeholder."""
    try:
        st = image.stat()
        key = hashlib.sha1(f"{image.resolve()}\0{st.st_mtime_ns}\0{st.st_size}".encode()).hexdigest()
    except OSError:
        return _placeholder(thumbs_dir)
    out = thumbs_dir / f"{key}.jpg"
    if out.is_file():
        return out
    try:
        with Image.open(image) as raw:
            raw.draft("RGB", (px, px))  # JPEG: decode at reduced size, much faster
            img = ImageOps.exif_transpose(raw)
            img.thumbnail((px, px))
            img = _flatten(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return _placeholder(thumbs_dir)
    _save_jpeg_atomic(img, out)
    return out


def _flatten(img: Image.Image) -> Image.Image:
    """RGB on white, as an image viewer shows transparency."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _placeholder(thumbs_dir: Path) -> Path:
    out = thumbs_dir / "_unreadable.jpg"
    if not out.is_file():
        img = Image.new("RGB", (THUMB_PX, THUMB_PX), (90, 90, 90))
        ImageDraw.Draw(img).text((THUMB_PX // 2 - 34, THUMB_PX // 2 - 6), "unreadable", fill=(255, 255, 255))
        _save_jpeg_atomic(img, out)
    return out


def _save_jpeg_atomic(img: Image.Image, out: Path) -> None:
    with atomic_path(out) as tmp:
        img.save(tmp, format="JPEG", quality=85)
