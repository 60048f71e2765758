"""Auto-caption a dataset from the UI: ``python -m training.caption`` as a child process, one job at a time.

The child writes JSON-line events (read with training.contract.caption_events) and stops at a stop file, both in
``<data>/cache/caption/<job id>/`` with its output log. Stop keeps every caption already written. A caption model
would share the GPU with a training run, so no job starts while the supervisor has a run going or queued.
"""

from __future__ import annotations

import atexit
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.supervisor import child_env, new_group_kwargs
from training.contract.caption_events import (
    CaptionDone,
    CaptionError,
    CaptionEventReader,
    CaptionProgress,
    CaptionStart,
)
from training.contract.captioners import (
    DEFAULT_MODEL,
    KINDS,
    availability,
    catalogue,
    hub_cached,
    hub_offline,
    known_model,
    local_dir,
    local_models,
)
from training.contract.errors import UserError

CAPTION_DIR = Path("cache") / "caption"
FOLDER_CHOICE = "(a folder)"  # the model list's last entry: the folder or hub id typed in the box it reveals
FOLDER_LABEL = "A folder…"
EXISTING = ("skip", "overwrite", "append", "prepend")
PREVIEW_IMAGES = 8
STOP_GRACE_S = 20.0  # after the stop file, how long the child gets to finish its batch before SIGTERM


@dataclass(frozen=True)
class CaptionRequest:
    """What the panel asks for; the CLI's options of the same names."""

    dataset: Path
    kind: str
    model: str
    general_threshold: float | None = None
    character_threshold: float | None = None
    trigger: str = ""
    existing: str = "skip"
    prompt: str = ""
    caption_extension: str = ".txt"

    def check(self) -> None:
        """One line naming the setting, before any process starts."""
        if self.kind not in KINDS:
            raise UserError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.model.strip():
            raise UserError(f"give the {self.kind} model: a folder on this computer or a hub id (owner/name)")
        if not self.dataset.is_dir():
            raise UserError(f"dataset folder {self.dataset} does not exist: load a dataset folder first")
        if self.existing not in EXISTING:
            raise UserError(f"existing captions must be one of {', '.join(EXISTING)}, got {self.existing!r}")

    def arguments(self) -> list[str]:
        args = [str(self.dataset), f"--{self.kind}", self.model.strip(), "--existing", self.existing,
                "--caption-extension", self.caption_extension or ".txt"]
        if self.trigger.strip():
            args += ["--trigger", self.trigger.strip()]
        if self.kind == "tagger":
            for name, value in (("general", self.general_threshold), ("character", self.character_threshold)):
                if value is not None:
                    args += [f"--{name}-threshold", str(value)]
        elif self.prompt.strip():
            args += ["--prompt", self.prompt.strip()]
        return args


def model_choices(data_dir: Path, kind: str) -> list[tuple[str, str]]:
    """(label, value) pairs of the panel's model list for ``kind``: the user's own folders first (they work
    offline), then the catalogue, then "A folder…". A value is what ``--tagger``/``--captioner`` gets."""
    local = [(m.label, str(m.path)) for m in local_models(data_dir, kind)]
    known = [(f"{m.repo_id} ({m.size})", m.repo_id) for m in catalogue(kind)]
    return [*local, *known, (FOLDER_LABEL, FOLDER_CHOICE)]


def default_choice(data_dir: Path, kind: str, suggested: str = "") -> str:
    """The entry chosen for ``kind``: ``suggested`` (a preset's model) when it can load now or be downloaded, else
    the user's first folder of that kind (offline, a folder is what works), else the suggested or default model."""
    model = suggested or DEFAULT_MODEL.get(kind, "")  # type: ignore[call-overload]
    local = local_models(data_dir, kind)
    if local and (not suggested or (hub_offline() and not hub_cached(model, kind))):
        return str(local[0].path)
    return model


def model_of(choice: str | None, typed: str | None) -> str:
    """The MODEL the job gets: the entry chosen, or what was typed once "A folder…" is chosen."""
    return (typed or "").strip() if choice == FOLDER_CHOICE else (choice or "")


def model_note(data_dir: Path, kind: str, choice: str | None) -> str:
    """One line under the model list: what the entry is and whether it loads offline."""
    if choice == FOLDER_CHOICE:
        files = ("model.onnx + selected_tags.csv" if kind == "tagger" else "config.json + weights")
        return (f"A {kind} folder on this computer ({files}) or a hub id (owner/name). Folders put under "
                f"{local_dir(data_dir, kind)} are listed here.")
    known = known_model(choice or "")
    if known is not None:
        return f"{known.description}. {availability(known, data_dir)}"
    if choice and Path(choice).is_dir():
        return f"Folder {choice}: loads offline."
    return ""


def default_prompt(choice: str | None) -> str:
    known = known_model(choice or "")
    return known.prompt if known is not None else ""


@dataclass
class CaptionStatus:
    """One job as the panel shows it. ``items``: (image path, caption) of the latest images, newest last."""

    job_id: str = ""
    preview: bool = False
    running: bool = False
    done: int = 0
    total: int = 0
    items: list[tuple[str, str]] = field(default_factory=list)
    line: str = ""  # plain text, one line
    error: bool = False  # the job ended without captioning: ``line`` says why
    # (time, images done) at the first finished image: the rate from there on excludes loading the model
    pace_from: tuple[float, int] | None = None

    @property
    def finished(self) -> bool:
        return bool(self.job_id) and not self.running


@dataclass
class _Job:
    job_id: str
    folder: Path
    preview: bool
    popen: subprocess.Popen
    reader: CaptionEventReader
    status: CaptionStatus
    stop_asked: float | None = None
    ended: bool = False


class CaptionJobs:
    """The one captioning job of this app (or none). ``training_busy`` says whether a training run holds the GPU."""

    def __init__(self, data_dir: Path, training_busy: Callable[[], bool], python: str = sys.executable) -> None:
        self.root = Path(data_dir) / CAPTION_DIR
        self.training_busy = training_busy
        self.python = python
        self._job: _Job | None = None
        self._lock = threading.Lock()
        # The child has its own process group, so the UI's Ctrl+C does not reach it: end it when the UI exits.
        atexit.register(self.close)

    def start(self, request: CaptionRequest, preview: bool) -> CaptionStatus:
        """Start a preview (first images, nothing written) or a run over all images; UserError says why not."""
        request.check()
        with self._lock:
            if self._job is not None and self._running(self._job):
                raise UserError("a captioning job is running: wait for it or press Stop")
            if self.training_busy():
                raise UserError("a training run is going or queued: captioning would share its GPU; start it "
                                "when the run has ended")
            self._job = self._spawn(request, preview)
            return self._job.status

    def stop(self) -> str:
        """Ask the running job to stop after its current image; what it wrote stays."""
        with self._lock:
            job = self._job
            if job is None or not self._running(job):
                return "No captioning job is running."
            (job.folder / "stop").touch()
            job.stop_asked = time.monotonic()
            return "Stopping after the current image: every caption already written is kept."

    def poll(self) -> CaptionStatus:
        with self._lock:
            if self._job is None:
                return CaptionStatus()
            self._update(self._job)
            return self._job.status

    def close(self) -> None:
        """End a running job (the app closes): terminate its process group, wait briefly."""
        with self._lock:
            job = self._job
            if job is not None and job.popen.poll() is None:
                job.popen.terminate()
                try:
                    job.popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    job.popen.kill()

    def _spawn(self, request: CaptionRequest, preview: bool) -> _Job:
        job_id = time.strftime("%Y%m%d-%H%M%S") + f"-{time.monotonic_ns() % 1000000:06d}"
        folder = self.root / job_id
        folder.mkdir(parents=True, exist_ok=True)
        events = folder / "events.jsonl"
        cmd = [self.python, "-m", "training.caption", *request.arguments(), "--events", str(events),
               "--stop-file", str(folder / "stop")]
        cmd += ["--dry-run", str(PREVIEW_IMAGES)] if preview else []
        with open(folder / "caption.log", "ab") as log:
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=child_env(), **new_group_kwargs())
        status = CaptionStatus(job_id, preview, running=True, line="Loading the model…")
        return _Job(job_id, folder, preview, popen, CaptionEventReader(events), status)

    def _running(self, job: _Job) -> bool:
        self._update(job)
        return job.status.running

    def _update(self, job: _Job) -> None:
        if job.ended:
            return
        for event in job.reader.read_new():
            _apply(job.status, event, time.monotonic())
        if job.stop_asked is not None and time.monotonic() - job.stop_asked > STOP_GRACE_S:
            job.popen.terminate()  # the batch takes too long: SIGTERM keeps what was written too
        code = job.popen.poll()
        if code is None:
            return
        for event in job.reader.read_new():  # what it wrote just before exiting
            _apply(job.status, event, time.monotonic())
        job.ended = True
        job.status.running = False
        if job.status.line.startswith(("Loading", "Captioning", "Previewing")):  # it ended before its last event
            job.status.error = True
            job.status.line = _last_line(job.folder / "caption.log") or f"the captioner exited with status {code}"


def _apply(status: CaptionStatus, event: object, now: float) -> None:
    verb = "Previewing" if status.preview else "Captioning"
    match event:
        case CaptionStart(total=total):
            status.total = total
            status.line = f"{verb}: 0 of {total} image(s)"
        case CaptionProgress():
            status.done, status.total = event.done, event.total
            status.items.append((event.path, event.caption or f"({event.status}: {event.reason or 'no caption'})"))
            status.pace_from = status.pace_from or (now, event.done)
            status.line = f"{verb}: {event.done} of {event.total} image(s){_time_left(status, now)}"
        case CaptionDone():
            status.line = _summary(status, event)
        case CaptionError(msg=msg):
            status.error = True
            status.line = _one_line(msg)


def _time_left(status: CaptionStatus, now: float) -> str:
    """" · about 2 min left" from the pace since the first finished image, once two more have finished."""
    if status.pace_from is None:
        return ""
    started, done_then = status.pace_from
    counted = status.done - done_then
    if counted < 2 or status.done >= status.total:
        return ""
    seconds = (now - started) / counted * (status.total - status.done)
    return f" · about {round(seconds / 60)} min left" if seconds >= 90 else f" · about {max(5, round(seconds))} s left"


def _summary(status: CaptionStatus, done: CaptionDone) -> str:
    if status.preview:
        return f"Preview: nothing written; proposed captions for {len(status.items)} image(s)."
    counts = f"{done.written} written, {done.skipped} skipped, {done.failed} failed"
    if done.stopped:
        return f"Stopped after {status.done} of {status.total} image(s): {counts}; every caption written is kept."
    return f"Done: {counts} of {status.total} image(s)."


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _last_line(log: Path) -> str:
    """The child's last output line: its one-line error when it ended before writing an event."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return _one_line(lines[-1].removeprefix("error: ")) if lines else ""
