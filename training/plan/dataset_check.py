"""The dataset check before training: what the trainer will see, and what is likely to go wrong, in one report.

Builds on ``scan_dataset`` (concepts, repeats, unreadable images, missing captions) and adds what the scan does not
look for: tiny images, duplicates, captions past the 75-token window, the bucket table and the step plan. Torch-free,
so the UI can run it in its own process; the step plan mirrors ``training.run.prepare`` (a unit test holds them equal).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from training.contract.config import TrainConfig
from training.contract.errors import UserError
from training.data.buckets import Bucket, assign_buckets, batches_per_epoch, bucket_table
from training.data.dataset_config import dataset_settings, scan_run_dataset
from training.data.folder import DatasetScan, ImageItem, balance_reg, concept_folders, image_files
from training.plan.schedule import Schedule, split_validation

TOKEN_WINDOW = 75  # CLIP's 77 positions minus the begin and end tokens; later tokens are cut off
TINY_SHARE = 0.5  # an image with under half the training resolution's pixels learns little detail
SIMILAR_BITS = 4  # difference-hash bits (of 64) two images may differ by and still count as the same picture
SIMILAR_COLOR = 12.0  # mean 8x8 colour difference (0-255) allowed: flat images of different colours hash alike
MAX_LISTED = 10  # files named per finding before "and N more"
# What a dataset folder looks like, shown when a folder has nothing to train on.
DATASET_LAYOUT = """my_dataset/              the folder to give as train_data_dir
  10_mychar/             10 = repeats: each image is seen 10 times per epoch
    photo1.png           jpg, jpeg, png, webp or bmp
    photo1.txt           its caption, e.g. "mychar, red scarf, outdoors"
  3_background/          a second concept, 3 repeats (optional)
    ...
(or the images and their .txt captions directly in my_dataset/)"""


class NoTrainingImages(UserError):
    """A dataset folder that exists but holds no image the trainer would use; says what a dataset folder is."""

    def __init__(self, folder: Path, notes: list[str] | None = None) -> None:
        super().__init__(f"no training images in {folder}: put images (jpg, png, webp, bmp) with .txt captions "
                         "beside them in it, directly or in subfolders named like '10_mychar' (10 = repeats)")
        self.folder = folder
        self.notes = notes or []

    def to_markdown(self) -> str:
        notes = [f"- {md_escape(note)}" for note in self.notes]
        return "\n".join([f"❌ **{md_escape(str(self))}**", *notes, "", "A dataset folder looks like this:",
                          "```", DATASET_LAYOUT, "```"])


@dataclass(frozen=True)
class Finding:
    """One file and what is wrong with it, e.g. ``(a.png, "200x150, trains in a 192x128 bucket")``."""

    path: Path
    detail: str


@dataclass(frozen=True)
class ConceptRow:
    folder: str
    repeats: int
    images: int
    is_reg: bool = False

    @property
    def label(self) -> str:
        return f"{self.folder} (regularisation)" if self.is_reg else self.folder

    @property
    def per_epoch(self) -> int:
        return self.images * self.repeats


@dataclass(frozen=True)
class StepPlan:
    """How long the run will be, computed by the trainer's own ``training.plan.schedule`` (one GPU)."""

    images: int  # readable images that train (held-out validation images excluded)
    terms: list[tuple[str, int, int]]  # (concept folder, images, repeats)
    held_out: int
    per_epoch: int  # images x repeats, regularisation samples included
    batch_size: int
    buckets: int
    batches_per_epoch: int  # each bucket's last partial batch counts as a batch
    grad_accum: int
    steps_per_epoch: int
    total_steps: int
    total_epochs: int
    max_train_epochs: int | None
    max_train_steps: int
    reg_images: int = 0  # regularisation images found
    reg_per_epoch: int = 0  # regularisation samples per epoch after kohya's balancing

    def lines(self, markdown: bool = False) -> list[str]:
        """The formula with this run's numbers, one step a line (the result in bold when ``markdown``)."""
        name_of = md_escape if markdown else str
        terms = " + ".join(f"{n} × {r}" + (f" ({name_of(name)})" if len(self.terms) > 1 else "")
                           for name, n, r in self.terms)
        held = f"; {self.held_out} image(s) held out for validation" if self.held_out else ""
        bold = "**" if markdown else ""
        if self.reg_images:
            train = self.per_epoch - self.reg_per_epoch
            out = [f"images × repeats: {terms} = {train} training images + {self.reg_per_epoch} regularisation "
                   f"images (of {self.reg_images}, balanced to the training count) = {self.per_epoch} per "
                   f"epoch{held}"]
        else:
            out = [f"images × repeats: {terms} = {self.per_epoch} per epoch{held}"]
        rounding = ""
        if self.batches_per_epoch != math.ceil(self.per_epoch / self.batch_size):
            rounding = f" (each of the {self.buckets} buckets rounds up to whole batches)"
        out.append(f"÷ train_batch_size {self.batch_size} → {self.batches_per_epoch} batches per epoch{rounding}")
        out.append(f"÷ gradient_accumulation_steps {self.grad_accum} → {self.steps_per_epoch} steps per epoch")
        if self.max_train_epochs:
            out.append(f"× max_train_epochs {self.max_train_epochs} = {bold}{self.total_steps} steps{bold} "
                       "(max_train_epochs overrides max_train_steps)")
        else:
            epochs = self.total_steps / self.steps_per_epoch
            cut = "" if self.total_steps % self.steps_per_epoch == 0 else ", the last one cut short"
            out.append(f"max_train_steps = {bold}{self.total_steps} steps{bold} = {epochs:.1f} epochs "
                       f"({self.total_epochs} started{cut}); set max_train_epochs to count in epochs instead")
        return out


@dataclass
class DatasetReport:
    folder: Path
    resolution: tuple[int, int]
    concepts: list[ConceptRow]
    scan_warnings: list[str]  # the scan's own lines: ignored folders and formats, unreadable images, no caption
    unreadable: list[Finding]
    missing_captions: list[Path]
    tiny: list[Finding]
    tiny_rule: str
    exact_duplicates: list[list[Path]]
    similar_images: list[list[Path]]
    long_captions: list[Finding]
    buckets: dict[Bucket, int]  # distinct images per bucket
    plan: StepPlan

    @property
    def problems(self) -> int:
        """How many kinds of finding ask the user to look."""
        return (len(self.scan_warnings) + len(self.tiny) + len(self.exact_duplicates) + len(self.similar_images)
                + len(self.long_captions))

    def problem_lines(self) -> list[str]:
        """One line per kind of finding, naming the files."""
        lines = list(self.scan_warnings)
        if self.tiny:
            lines.append(f"{len(self.tiny)} small image(s), {self.tiny_rule}: " + _findings(self.tiny))
        if self.exact_duplicates:
            lines.append(f"{len(self.exact_duplicates)} set(s) of identical files (same bytes): each copy trains "
                         "again, like extra repeats; keep one: " + _groups(self.exact_duplicates))
        if self.similar_images:
            lines.append(f"{len(self.similar_images)} set(s) of images that look the same (perceptual hash), "
                         "e.g. a resized or re-saved copy; keep one unless they differ on purpose: "
                         + _groups(self.similar_images))
        if self.long_captions:
            lines.append(f"{len(self.long_captions)} caption(s) longer than the {TOKEN_WINDOW}-token window: tokens "
                         "past it are cut off and never trained; shorten them: " + _findings(self.long_captions))
        return lines

    def summary(self) -> str:
        verdict = "ready to train" if not self.problems else f"{self.problems} thing(s) to look at"
        train = [c for c in self.concepts if not c.is_reg]
        reg = [c for c in self.concepts if c.is_reg]
        regs = f" + {sum(c.images for c in reg)} regularisation image(s)" if reg else ""
        return (f"{self.folder}: {sum(c.images for c in train)} image(s) in {len(train)} concept folder(s){regs}, "
                f"{self.plan.total_steps} steps: {verdict}")

    def to_text(self) -> str:
        """Plain text, for the CLI and logs."""
        parts = [self.summary(), "", "Concepts:"]
        parts += [f"  {c.label}: {c.images} image(s) × {c.repeats} repeats = {c.per_epoch}" for c in self.concepts]
        if self.problem_lines():
            parts += ["", "To look at:", *(f"  - {line}" for line in self.problem_lines())]
        parts += ["", "Buckets:", *("  " + row for row in bucket_table(self.buckets).splitlines())]
        parts += ["", "Step plan:", *(f"  {line}" for line in self.plan.lines())]
        return "\n".join(parts)

    def to_markdown(self) -> str:
        """The same report for the UI (gr.Markdown)."""
        head = "✅" if not self.problems else "⚠️"
        parts = [f"{head} **{md_escape(self.summary())}**", "", "| concept folder | images | repeats | per epoch |",
                 "|---|---:|---:|---:|"]
        parts += [f"| {md_escape(c.label)} | {c.images} | {c.repeats} | {c.per_epoch} |" for c in self.concepts]
        if self.problem_lines():
            parts += ["", "**To look at**", *(f"- {md_escape(line)}" for line in self.problem_lines())]
        parts += ["", "**Buckets** (images per bucket)", "```", bucket_table(self.buckets), "```"]
        parts += ["", "**Step plan** (one GPU)", *(f"- {line}" for line in self.plan.lines(markdown=True))]
        return "\n".join(parts)

    __str__ = to_text


def check_dataset(cfg: TrainConfig, scan: DatasetScan | None = None, similar: bool = True) -> DatasetReport:
    """Check ``cfg.train_data_dir`` (and ``reg_data_dir``, or the ``dataset_config``'s folders) with the run's
    settings. Raises ``UserError`` (one line) for a missing folder, a folder without images or impossible bucket
    settings."""
    if not cfg.train_data_dir.strip() and not cfg.dataset_config:
        raise UserError("train_data_dir is empty: give the folder holding your images (or '10_name' subfolders)")
    cfg = dataset_settings(cfg)  # a dataset config's resolution, batch size and buckets, as the run takes them
    if scan is None:
        if not cfg.dataset_config:
            require_images(Path(cfg.train_data_dir).expanduser())
        scan = scan_run_dataset(cfg)
    train_items, val_items, val_kind = split_validation(cfg, scan.items)
    held_out = len(val_items) if val_kind == "held-out" else 0  # a train-subset still trains
    item_buckets = _buckets(cfg, scan.items)
    train_buckets = _buckets(cfg, train_items)
    tiny, tiny_rule = find_tiny(cfg, scan.items, item_buckets)
    exact, look_alike = find_duplicates(scan.items, similar)
    return DatasetReport(
        folder=scan.config_file or Path(cfg.train_data_dir).expanduser(),
        resolution=cfg.resolution_wh,
        concepts=[ConceptRow(c.path.name, c.repeats, c.image_count, c.is_reg)
                  for c in scan.concepts + scan.reg_concepts],
        scan_warnings=list(scan.warnings),
        unreadable=[Finding(p, reason) for p, reason in scan.skipped],
        missing_captions=[it.path for it in scan.items if not _has_caption(it.path, cfg.caption_extension)],
        tiny=tiny,
        tiny_rule=tiny_rule,
        exact_duplicates=exact,
        similar_images=look_alike,
        long_captions=find_long_captions(scan.items, cfg.caption_extension),
        buckets=dict(Counter(item_buckets)),
        plan=plan_steps(cfg, train_items, train_buckets, held_out, scan.reg_items),
    )


def require_images(folder: Path) -> None:
    """Raise ``NoTrainingImages`` for an existing folder without a single image file where the trainer looks
    (no image is decoded; a missing folder is left to the scan, which says so)."""
    if not folder.is_dir():
        return
    notes: list[str] = []
    if not any(image_files(path) for path, _name, _repeats in concept_folders(folder, notes)):
        raise NoTrainingImages(folder, notes)


def _buckets(cfg: TrainConfig, items: list[ImageItem]) -> list[Bucket]:
    return assign_buckets([it.size for it in items], resolution=cfg.resolution_wh, enable_bucket=cfg.enable_bucket,
                          min_reso=cfg.min_bucket_reso, max_reso=cfg.max_bucket_reso, step=cfg.bucket_reso_steps)


def plan_steps(cfg: TrainConfig, items: list[ImageItem], buckets: list[Bucket], held_out: int = 0,
               reg_items: list[ImageItem] | None = None) -> StepPlan:
    """Steps as the trainer counts them: repeats expand each image, regularisation images join the epoch balanced
    against the training images (so an epoch with them is about twice as long, as sd-scripts counts it), the
    sampler batches each bucket on its own (a partial last batch still costs a batch), accumulation divides, and
    max_train_epochs beats max_train_steps."""
    reg = balance_reg(items, reg_items or [])
    per_bucket: Counter[tuple[int, Bucket]] = Counter()  # per dataset config [[datasets]] too, as the sampler
    for item, bucket in zip(items + reg, buckets + _buckets(cfg, reg), strict=True):
        per_bucket[(item.dataset, bucket)] += item.repeats
    batches = batches_per_epoch(per_bucket.values(), cfg.train_batch_size)
    schedule = Schedule.build(cfg, batches, num_processes=1)
    terms: Counter[tuple[str, int]] = Counter((it.path.parent.name, it.repeats) for it in items)
    return StepPlan(images=len(items), terms=[(name, n, r) for (name, r), n in terms.items()], held_out=held_out,
                    per_epoch=sum(per_bucket.values()), batch_size=cfg.train_batch_size, buckets=len(per_bucket),
                    batches_per_epoch=batches, grad_accum=cfg.gradient_accumulation_steps,
                    steps_per_epoch=schedule.steps_per_epoch, total_steps=schedule.total_steps,
                    total_epochs=schedule.total_epochs, max_train_epochs=cfg.max_train_epochs,
                    max_train_steps=cfg.max_train_steps, reg_images=len(reg_items or []),
                    reg_per_epoch=sum(it.repeats for it in reg))


def find_tiny(cfg: TrainConfig, items: list[ImageItem], buckets: list[Bucket]) -> tuple[list[Finding], str]:
    """Images that train at far below the training resolution. Bucketing never upscales, so a small image trains
    in a small bucket of its own (little detail, soft results); without bucketing it is upscaled (blurry)."""
    w, h = cfg.resolution_wh
    area = w * h
    rule = (f"shorter side under min_bucket_reso ({cfg.min_bucket_reso} px) or under half the pixels of the "
            f"{w}x{h} training resolution; they train soft or blurry, so use larger originals or remove them")
    found = []
    for item, (bw, bh) in zip(items, buckets, strict=True):
        iw, ih = item.size
        if min(iw, ih) >= cfg.min_bucket_reso and iw * ih >= TINY_SHARE * area:
            continue
        if cfg.enable_bucket:
            detail = f"{iw}x{ih}, trains in a {bw}x{bh} bucket"
        else:
            detail = f"{iw}x{ih}, upscaled {max(bw / iw, bh / ih):.1f}x to {bw}x{bh}"
        found.append(Finding(item.path, detail))
    return found, rule


def find_duplicates(items: list[ImageItem], similar: bool = True) -> tuple[list[list[Path]], list[list[Path]]]:
    """(identical files by SHA-256, images that look the same by a difference hash + colour check). A set of
    look-alikes that are all byte-identical is reported once, as identical."""
    by_digest: dict[str, list[Path]] = defaultdict(list)
    for item in items:
        by_digest[_sha256(item.path)].append(item.path)
    exact = [sorted(g) for g in by_digest.values() if len(g) > 1]
    if not similar or len(items) < 2:
        return exact, []
    digest_of = {p: d for d, paths in by_digest.items() for p in paths}
    groups = _similar_groups([it.path for it in items])
    look_alike = [g for g in groups if len({digest_of[p] for p in g}) > 1]
    return exact, look_alike


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fingerprint(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """64-bit difference hash (brightness gradients of a 9x8 thumbnail) and an 8x8 RGB thumbnail."""
    with Image.open(path) as raw:
        raw.draft("RGB", (64, 64))  # JPEG decodes at a fraction of the size: same hash, much faster
        img = ImageOps.exif_transpose(raw).convert("RGB")
    grey = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    colour = np.asarray(img.resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
    return (grey[:, 1:] > grey[:, :-1]).ravel(), colour


def _similar_groups(paths: list[Path]) -> list[list[Path]]:
    prints, kept = [], []
    for p in paths:
        try:
            prints.append(_fingerprint(p))
            kept.append(p)
        except (OSError, ValueError):  # changed on disk since the scan read it: the scan's next run says so
            continue
    paths = kept
    if len(paths) < 2:
        return []
    bits = np.stack([b for b, _ in prints])
    distance = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(distance <= SIMILAR_BITS, k=1)), strict=True):
        if np.abs(prints[i][1] - prints[j][1]).mean() <= SIMILAR_COLOR:
            parent[root(int(i))] = root(int(j))
    groups: dict[int, list[Path]] = defaultdict(list)
    for i, p in enumerate(paths):
        groups[root(i)].append(p)
    return [sorted(g) for g in groups.values() if len(g) > 1]


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """The CLIP BPE tokenizer from the bundled vocabulary (SD1 and SD2 count tokens alike). Imported on first use:
    transformers takes a few seconds to import, and the UI should start without it."""
    from transformers import CLIPTokenizer

    from training.models.families import TOKENIZER_DIR

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"))


def count_tokens(captions: list[str]) -> list[int]:
    """CLIP tokens per caption, without the begin/end tokens (what counts against the 75-token window)."""
    if not captions:
        return []
    return [len(ids) for ids in clip_tokenizer()(captions, add_special_tokens=False)["input_ids"]]


def find_long_captions(items: list[ImageItem], caption_extension: str) -> list[Finding]:
    counts = count_tokens([it.caption for it in items])
    return [Finding(it.path.with_suffix(caption_extension), f"{n} tokens")
            for it, n in zip(items, counts, strict=True) if n > TOKEN_WINDOW]


def _has_caption(image: Path, caption_extension: str) -> bool:
    caption = image.with_suffix(caption_extension)
    try:
        return caption.is_file() and bool(caption.read_bytes().decode("utf-8-sig").strip())
    except (OSError, UnicodeDecodeError):
        return False


def _findings(found: list[Finding]) -> str:
    shown = ", ".join(f"{f.path.name} ({f.detail})" for f in found[:MAX_LISTED])
    return shown + (f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else "")


def _groups(groups: list[list[Path]]) -> str:
    shown = "; ".join(" = ".join(_rel(p, g) for p in g) for g in groups[:MAX_LISTED])
    return shown + (f" and {len(groups) - MAX_LISTED} more" if len(groups) > MAX_LISTED else "")


def _rel(path: Path, group: list[Path]) -> str:
    """The file name, with its folder when the set spans folders (two concepts can hold the same picture)."""
    return path.name if len({p.parent for p in group}) == 1 else f"{path.parent.name}/{path.name}"


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#"})


def md_escape(text: str) -> str:
    """Paths and names carry markdown characters (``my_cat_01.png`` would turn italic, ``<name>`` vanish)."""
    return text.translate(_MD_SPECIAL)
