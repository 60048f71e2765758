"""The loop over a dataset's images: read what is there, caption in batches, write each caption atomically beside
its image, and keep count. Stopping (Ctrl+C, SIGTERM, the stop file) keeps every caption already written: each is
complete or absent, never half a file."""

from __future__ import annotations

import contextlib
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from training.caption.compose import ComposeOptions, compose
from training.caption.events import EventLog
from training.caption.images import open_rgb
from training.contract.atomic import write_atomic
from training.contract.errors import UserError


class DeferredInterrupt:
    """Ctrl+C (or SIGTERM) as KeyboardInterrupt, except between writing a caption and counting it, where it would
    leave a caption on disk that the summary and the events do not name: there it waits for that short stretch."""

    def __init__(self) -> None:
        self.holding = False
        self.pending = False

    def handler(self, signum, frame) -> None:
        if self.holding:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def hold(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt


INTERRUPTS = DeferredInterrupt()


class Describer(Protocol):
    splits_tags: bool

    def describe(self, images: list[Image.Image]) -> list[list[str]]: ...


@dataclass(frozen=True)
class JobOptions:
    root: Path
    caption_extension: str = ".txt"
    batch_size: int = 1
    dry_run: int | None = None  # preview this many images, write nothing
    compose: ComposeOptions = field(default_factory=ComposeOptions)
    stop_file: Path | None = None


@dataclass
class Summary:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    previews: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return len(self.written) + len(self.skipped) + len(self.failed) + len(self.previews)


@dataclass
class _Pending:
    path: Path
    caption_path: Path
    existing: str
    image: Image.Image


def caption_path(image: Path, extension: str) -> Path:
    return image.with_suffix(extension if extension.startswith(".") else "." + extension)


def run_job(model: Describer, images: list[Path], options: JobOptions, events: EventLog,
            show: Callable[[str], None] = print, progress: bool = True) -> Summary:
    """Caption ``images`` (or preview the first ``options.dry_run`` of them); returns what happened to each.
    ``progress``: a progress bar on stderr (not in a dry run, whose lines are the output)."""
    if options.dry_run is not None:
        images = images[:options.dry_run]
    summary = Summary()
    started = time.monotonic()
    bar = _progress_bar(len(images), quiet=options.dry_run is not None or not progress)
    run = _Run(model, options, events, summary, len(images), bar, show)
    try:
        for start in range(0, len(images), options.batch_size):
            if options.stop_file is not None and options.stop_file.exists():
                summary.stopped = True
                break
            run.batch(images[start:start + options.batch_size])
    except KeyboardInterrupt:
        summary.stopped = True
    finally:
        bar.close()
        summary.seconds = time.monotonic() - started
    return summary


class _Run:
    """One job's state while it goes through the batches."""

    def __init__(self, model, options, events, summary, total, bar, show) -> None:
        self.model, self.options, self.events, self.summary = model, options, events, summary
        self.total, self.bar, self.show = total, bar, show

    def batch(self, paths: list[Path]) -> None:
        pending = [p for p in (self._prepare(path) for path in paths) if p is not None]
        if not pending:
            return
        try:
            captions = self.model.describe([p.image for p in pending])
        except UserError:
            raise
        except Exception as e:  # one bad batch (a model error on odd input) must not lose the rest of the dataset
            for p in pending:
                self._record(p.path, "failed", reason=f"the model failed: {_first_line(e)}")
            return
        for p, parts in zip(pending, captions, strict=True):
            self._finish(p, parts)

    def _prepare(self, path: Path) -> _Pending | None:
        """The image and its current caption, or None when it is skipped or cannot be read."""
        target = caption_path(path, self.options.caption_extension)
        try:
            existing = read_caption(target)
        except OSError as e:
            self._record(path, "failed", reason=str(e))
            return None
        if existing and self.options.compose.existing == "skip":
            self._record(path, "skipped", reason=f"has a caption ({target.name})")
            return None
        try:
            image = open_rgb(path)
        except OSError as e:
            self._record(path, "failed", reason=str(e))
            return None
        return _Pending(path, target, existing, image)

    def _finish(self, p: _Pending, parts: list[str]) -> None:
        caption = compose(parts, p.existing, self.options.compose, self.model.splits_tags)
        if not caption:
            self._record(p.path, "failed", reason="the model gave an empty caption")
        elif self.options.dry_run is not None:
            self._record(p.path, "preview", caption=caption)
        else:
            with INTERRUPTS.hold():
                try:
                    write_caption(p.caption_path, caption)
                except OSError as e:
                    self._record(p.path, "failed", reason=f"cannot write {p.caption_path.name}: {_first_line(e)}")
                    return
                self._record(p.path, "written", caption=caption)

    def _record(self, path: Path, status: str, caption: str | None = None, reason: str | None = None) -> None:
        s = self.summary
        if status == "written":
            s.written.append(path)
        elif status == "preview":
            s.previews.append((path, caption or ""))
        else:
            (s.skipped if status == "skipped" else s.failed).append((path, reason or ""))
        fields = {k: v for k, v in (("caption", caption), ("reason", reason)) if v is not None}
        self.events.write("progress", done=s.done, total=self.total, path=str(path), status=status, **fields)
        self.bar.update(1)
        if status == "preview":
            self.show(f"{_shown(path, self.options.root)}: {caption}")
        elif status == "skipped" and self.options.dry_run is not None:
            self.show(f"{_shown(path, self.options.root)}: (left as it is: {reason})")


def read_caption(path: Path) -> str:
    """The caption in ``path``, whitespace collapsed; "" when there is none (no file, or an empty one)."""
    if not path.is_file():
        return ""
    try:
        return " ".join(path.read_text(encoding="utf-8-sig").split())
    except UnicodeDecodeError as e:
        raise OSError(f"{path.name} is not UTF-8 text; re-save it as UTF-8 or remove it") from e
    except OSError as e:
        raise OSError(f"cannot read {path.name}: {_first_line(e)}") from e


def write_caption(path: Path, caption: str) -> None:
    """Atomically; a caption file the user made read-only is left alone (a rename would replace it regardless)."""
    if path.exists() and not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{path.name} is read-only (make it writable to caption this image)")
    write_atomic(path, caption)


def _first_line(e: BaseException) -> str:
    return (str(e) or type(e).__name__).splitlines()[0]


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _progress_bar(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=quiet, dynamic_ncols=True, mininterval=0.5)
