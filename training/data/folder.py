"""Scan a dataset in kohya's folder convention: ``train_data_dir/<repeats>_<concept>/*.png`` plus ``.txt`` captions.

Every rule the scan applies that might surprise the user (ignored folders, missing captions, unreadable images, the
user pointing at the concept folder itself) ends up as one line in ``DatasetScan.warnings``; nothing is dropped
silently. The caller prints the warnings before training starts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from training.contract.errors import UserError
from training.data.subset import SubsetOptions

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
# Formats people do drop in a dataset but that we do not train on: say so instead of skipping them silently.
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl"})
OTHER_CAPTION_EXTENSIONS = (".txt", ".caption", ".tags")
CONCEPT_DIR = re.compile(r"^(\d+)_(.+)$")
# EXIF orientations 5-8 rotate by 90 degrees, so width and height swap once the image is transposed.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_MAX_NAMES = 10  # how many file names a warning lists before it says "and N more"


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    concept: str
    repeats: int
    size: tuple[int, int]  # (width, height) after EXIF orientation, as PIL reports it
    options: SubsetOptions | None = None  # its subset's caption/augmentation options; None: the run's
    is_reg: bool = False  # a regularisation image: balanced against the training images, its loss weighted
    dataset: int = 0  # which [[datasets]] of a dataset config it belongs to (reg images balance per dataset)


@dataclass(frozen=True)
class Concept:
    name: str
    path: Path
    repeats: int
    image_count: int
    is_reg: bool = False
    dataset: int = 0  # its [[datasets]] in a dataset config


@dataclass
class DatasetScan:
    items: list[ImageItem]  # the training images (never a regularisation image)
    concepts: list[Concept]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reg_items: list[ImageItem] = field(default_factory=list)  # regularisation images, at their folders' repeats
    reg_concepts: list[Concept] = field(default_factory=list)
    config_file: Path | None = None  # the kohya dataset config the scan was read from, if any

    @property
    def num_train_images(self) -> int:
        """Images per epoch with repeats, as kohya counts them (``sum(images * repeats)``)."""
        return sum(c.image_count * c.repeats for c in self.concepts)

    @property
    def num_reg_images(self) -> int:
        """Regularisation images with their folders' repeats, before balancing (kohya's ``ss_num_reg_images``)."""
        return sum(c.image_count * c.repeats for c in self.reg_concepts)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_tag_frequency``: per concept folder name, how many images carry each comma-separated tag."""
        freq: dict[str, dict[str, int]] = defaultdict(dict)
        for item in self.items + self.reg_items:
            counts = freq[item.path.parent.name]
            for tag in item.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
        return dict(freq)

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_dataset_dirs``: ``{folder name: {"n_repeats": n, "img_count": m}}``."""
        return _dirs(self.concepts)

    def reg_dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_reg_dataset_dirs``: the same for the regularisation folders."""
        return _dirs(self.reg_concepts)


def _dirs(concepts: list[Concept]) -> dict[str, dict[str, int]]:
    """Folder name -> repeats and images; a name used twice gets kohya's ' (2)' suffix instead of hiding the first."""
    dirs: dict[str, dict[str, int]] = {}
    for c in concepts:
        name, n = c.path.name, 2
        while name in dirs:
            name, n = f"{c.path.name} ({n})", n + 1
        dirs[name] = {"n_repeats": c.repeats, "img_count": c.image_count}
    return dirs


def balance_reg(train: list[ImageItem], reg: list[ImageItem]) -> list[ImageItem]:
    """The regularisation images an epoch holds, each with its repeats rewritten, as kohya balances them per
    dataset: whole images at their folders' repeats are taken in order until they reach the number of training
    images x repeats (the rest are left out), and when all of them fall short, one more repeat is added to each in
    turn until the two are equal. So an epoch holds about as many regularisation samples as training samples."""
    out: list[ImageItem] = []
    for dataset in sorted({it.dataset for it in reg}):
        wanted = sum(it.repeats for it in train if it.dataset == dataset)
        out += _balance_one([it for it in reg if it.dataset == dataset], wanted)
    return out


def _balance_one(reg: list[ImageItem], wanted: int) -> list[ImageItem]:
    repeats: list[int] = []
    total = 0
    for item in reg:  # the first pass: whole images at their own repeats
        if total >= wanted:
            break
        repeats.append(item.repeats)
        total += item.repeats
    i = 0
    while total < wanted:  # later passes: one more repeat each, in order, until the counts are equal
        repeats[i % len(repeats)] += 1
        total += 1
        i += 1
    return [replace(item, repeats=n) for item, n in zip(reg, repeats, strict=False)]


def scan_dataset(train_data_dir: Path, caption_extension: str = ".txt",
                 reg_data_dir: Path | None = None) -> DatasetScan:
    """Find concepts, images and captions under ``train_data_dir`` (and the regularisation images under
    ``reg_data_dir``); raise ``UserError`` if nothing is trainable."""
    root = Path(train_data_dir).expanduser()
    if not root.exists():
        raise UserError(f"training data folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"train_data_dir must be a folder, but {root} is a file")
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension  # "txt" is an easy slip; accept it
    scan = DatasetScan(items=[], concepts=[])
    for path, name, repeats in concept_folders(root, scan.warnings):
        _scan_concept(scan, path, name, repeats, caption_extension)
    if reg_data_dir is not None:
        scan_reg_dir(scan, Path(reg_data_dir).expanduser(), caption_extension)
    if scan.skipped:
        listed = _names([f"{p.name} ({reason})" for p, reason in scan.skipped])
        scan.warnings.append(f"skipped {len(scan.skipped)} unreadable image(s): {listed}")
    if not scan.items:
        raise UserError(
            f"no training images found in {root}: put images in subfolders named like '10_mychar' "
            "(10 = repeats) or directly in the folder"
        )
    return scan


def scan_reg_dir(scan: DatasetScan, root: Path, caption_extension: str) -> None:
    """Add the regularisation images under ``root`` to ``scan``: kohya's '<repeats>_<class>' folders, a caption
    file where there is one, else the class name (the folder name after the repeats)."""
    if not root.is_dir():
        raise UserError(f"reg_data_dir: folder {root} does not exist; give the folder holding your regularisation "
                        "images in subfolders like '1_person', or leave it empty")
    for path, name, repeats in concept_folders(root, scan.warnings):
        _scan_concept(scan, path, name, repeats, caption_extension, is_reg=True)
    if not scan.reg_items:
        raise UserError(f"reg_data_dir: no images found in {root}: put them in subfolders named like '1_person' "
                        "(1 = repeats, person = the class token), or leave reg_data_dir empty")


def concept_folders(root: Path, warnings: list[str]) -> list[tuple[Path, str, int]]:
    """Return ``(folder, concept name, repeats)`` for each concept, following kohya's naming rule."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    matching = [p for p in subdirs if CONCEPT_DIR.match(p.name)]
    direct = image_files(root)
    if not matching and direct:
        return [_flat_concept(root, warnings)]
    ignored = [p.name for p in subdirs if not CONCEPT_DIR.match(p.name)]
    if ignored:
        warnings.append(
            f"ignored {len(ignored)} folder(s) in {root} not named '<repeats>_<name>' (like '10_mychar'): "
            + _names(ignored)
        )
    if direct and matching:
        warnings.append(
            f"ignored {len(direct)} image(s) directly in {root} because it has concept folders; "
            f"move them into a '<repeats>_<name>' folder: " + _names([p.name for p in direct])
        )
    concepts = []
    for p in matching:
        m = CONCEPT_DIR.match(p.name)
        assert m is not None
        repeats = int(m.group(1))
        if repeats == 0:
            warnings.append(f"ignored folder '{p.name}': 0 repeats means its images would never be trained")
            continue
        concepts.append((p, m.group(2), repeats))
    return concepts


def _flat_concept(root: Path, warnings: list[str]) -> tuple[Path, str, int]:
    """A folder holding images directly is one concept; a name like ``10_mychar`` still gives its repeats."""
    m = CONCEPT_DIR.match(root.name)
    if m is None:
        return root, root.name, 1
    repeats = int(m.group(1)) or 1
    warnings.append(
        f"train_data_dir '{root.name}' is itself a concept folder: training its images as concept "
        f"'{m.group(2)}' with {repeats} repeats. To add more concepts, point train_data_dir at {root.parent}"
    )
    return root, m.group(2), repeats


def _scan_concept(scan: DatasetScan, folder: Path, name: str, repeats: int, caption_ext: str, *, is_reg: bool = False,
                  dataset: int = 0, options: SubsetOptions | None = None) -> None:
    """Add one folder's readable images; ``name`` is the caption of an image without one (kohya's class token)."""
    files = image_files(folder)
    unsupported = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS)
    if unsupported:
        scan.warnings.append(
            f"ignored {len(unsupported)} file(s) in '{folder.name}' with an unsupported format "
            f"(use jpg, png, webp or bmp): " + _names(unsupported)
        )
    uncaptioned: list[str] = []
    count = 0
    for path in files:
        size, reason = _image_size(path)
        if size is None:
            scan.skipped.append((path, reason))
            continue
        caption = _read_caption(path.with_suffix(caption_ext))
        if not caption:
            uncaptioned.append(path.name)
            caption = name
        item = ImageItem(path=path, caption=caption, concept=name, repeats=repeats, size=size, options=options,
                         is_reg=is_reg, dataset=dataset)
        (scan.reg_items if is_reg else scan.items).append(item)
        count += 1
    if uncaptioned:
        scan.warnings.append(_caption_warning(folder, name, caption_ext, uncaptioned))
    if count == 0 and not files:
        scan.warnings.append(f"folder '{folder.name}' has no images (supported: jpg, jpeg, png, webp, bmp)")
    if count:
        concept = Concept(name=name, path=folder, repeats=repeats, image_count=count, is_reg=is_reg, dataset=dataset)
        (scan.reg_concepts if is_reg else scan.concepts).append(concept)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _image_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """Decode the image fully (a truncated file fails only on decode) and return its upright (w, h) or a reason."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            if img.format == "JPEG":
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))  # decode at 1/8 scale: same check, 10x faster
            img.load()
    except Image.DecompressionBombError:
        return None, "too many pixels (over Pillow's decompression-bomb limit)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return None, f"cannot read: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if orientation in _SWAPPING_ORIENTATIONS:
        w, h = h, w
    return (w, h), ""


def _read_caption(path: Path) -> str:
    """Read a sidecar caption: UTF-8 with or without BOM, all whitespace runs (newlines too) collapsed to one space."""
    if not path.is_file():
        return ""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"caption file {path} is not UTF-8 text ({e.reason}); re-save it as UTF-8") from e
    return " ".join(text.split())


def _caption_warning(folder: Path, name: str, caption_ext: str, files: list[str]) -> str:
    instead = f"using the concept name '{name}' as their caption" if name else "training them with an empty caption"
    msg = f"{len(files)} image(s) in '{folder.name}' have no (or an empty) {caption_ext} caption; {instead}: " + \
        _names(files)
    others = [e for e in OTHER_CAPTION_EXTENSIONS if e != caption_ext and any(folder.glob(f"*{e}"))]
    if others:
        msg += f" (found {', '.join(others)} files: set caption_extension to use them)"
    return msg


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else "")
