"""The LoRA tools from the UI: ``python -m training.tools ...`` as a child process, one job at a time.

What a job may read is limited to the data folder and the user's --models-dir / --loras-dir folders; what it writes
goes under ``<data>/tools/<output name>/`` only. The child writes JSON-line events (training.contract.tool_events)
into that folder with its output log. Stop interrupts it (Ctrl+C, so its atomic write removes the temp file), then
kills it after a short grace; nothing is ever left under the output name half-written. A merge or an SVD would share
the GPU and RAM with a training run, so no job starts while the supervisor has a run going or queued.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from app.runs import RUNS_DIR
from app.supervisor import child_env, new_group_kwargs
from training.contract import st_header
from training.contract.errors import UserError
from training.contract.tool_events import (
    ToolDone,
    ToolError,
    ToolEventReader,
    ToolLine,
    ToolProgress,
    ToolStart,
)

TOOLS_DIR = Path("tools")
OPERATIONS = {"merge": "Merge into checkpoint", "merge-loras": "Merge LoRAs", "resize": "Resize",
              "extract": "Extract", "inspect": "Inspect"}
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")  # the CLI's --dynamic methods (kohya's names)
PRECISIONS = ("fp16", "bf16", "fp32")
EVENTS_FILE, LOG_FILE = "events.jsonl", "tool.log"
INSPECT_FOLDER = "inspect"  # the job folder of inspect, which writes no output of its own
STOP_GRACE_S = 5.0  # after Ctrl+C, how long the child gets to remove its temp file before it is killed
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")
LISTED = 400  # entries per picker list at most: a huge folder must not make the page slow
SKIPPED_FOLDERS = {"cache", ".latent_cache", "runs", "configs"}  # data-dir folders that hold no model to offer


@dataclass(frozen=True)
class ToolFolders:
    """Where the Tools tab may read (the data folder and the user's folders) and write (``<data>/tools``)."""

    data_dir: Path
    models: tuple[Path, ...] = ()
    loras: tuple[Path, ...] = ()

    @classmethod
    def of(cls, settings) -> ToolFolders:
        return cls(Path(settings.data_dir), tuple(settings.models_dirs), tuple(settings.loras_dirs))

    @property
    def tools_dir(self) -> Path:
        return self.data_dir / TOOLS_DIR

    @property
    def readable(self) -> list[Path]:
        return [self.data_dir, *self.models, *self.loras]

    def allowed_text(self) -> str:
        names = [f"the data folder {self.data_dir}"]
        names += [f"{d} (--models-dir)" for d in self.models] + [f"{d} (--loras-dir)" for d in self.loras]
        return ", ".join(names)

    def input_path(self, text: str | None, what: str) -> Path:
        """A chosen or typed path, resolved; one line when it is empty, outside the folders or missing."""
        text = (text or "").strip()
        if not text:
            raise UserError(f"choose the {what} from the list (or type its path)")
        path = Path(text).expanduser()
        path = (path if path.is_absolute() else self.data_dir / path).resolve()
        if not any(path.is_relative_to(root) for root in self.readable):
            raise UserError(f"{what} {text} is outside the folders the Tools tab may read: {self.allowed_text()}; "
                            "move it there or start LoRA Forge with --models-dir/--loras-dir naming its folder")
        if not path.exists():
            raise UserError(f"{what} {text} does not exist; choose it from the list")
        return path


@dataclass(frozen=True)
class ToolRequest:
    """What the tab asks for; the CLI's options of the same names. ``loras``: (path as chosen, strength)."""

    operation: str
    loras: tuple[tuple[str, float], ...] = ()
    model: str = ""
    base: str = ""
    tuned: str = ""
    unet_strength: float = 1.0
    te_strength: float = 1.0
    precision: str = ""  # "" keeps each tensor's dtype
    rank: int | None = None
    dynamic_method: str = ""  # "" a fixed rank
    dynamic_value: float | None = None
    conv_rank: int | None = None
    clamp_quantile: float = 0.99
    output_name: str = ""
    overwrite: bool = False

    def command(self, folders: ToolFolders) -> tuple[list[str], Path | None]:
        """The CLI arguments after ``-m training.tools`` (without --events) and the output path; every input
        checked first, each problem one line."""
        if self.operation not in OPERATIONS:
            raise UserError(f"operation must be one of {', '.join(OPERATIONS)}, got {self.operation!r}")
        build = getattr(self, f"_{self.operation.replace('-', '_')}")
        return build(folders)

    def _lora_paths(self, folders: ToolFolders, least: int) -> list[tuple[Path, float]]:
        chosen = [(text, strength) for text, strength in self.loras if (text or "").strip()]
        if len(chosen) < least:
            raise UserError(f"{OPERATIONS[self.operation].lower()} needs {least} LoRA file(s): choose them in the "
                            "LoRA lists")
        return [(folders.input_path(text, "LoRA"), 1.0 if s is None else float(s)) for text, s in chosen]

    def _output(self, folders: ToolFolders, default: str, suffix: str = ".safetensors") -> tuple[list[str], Path]:
        name = (self.output_name or "").strip().removesuffix(".safetensors") or default
        if not NAME_RE.match(name) or ".." in name:
            raise UserError(f"output name {name!r}: use letters, digits, spaces, '.', '_' and '-' only (no folders); "
                            f"the output goes to {folders.tools_dir}")
        out = folders.tools_dir / name / f"{name}{suffix}"
        return ["--out", str(out), *(["--force"] if self.overwrite else [])], out

    def _merge(self, folders: ToolFolders) -> tuple[list[str], Path]:
        model = folders.input_path(self.model, "checkpoint")
        loras = self._lora_paths(folders, 1)
        args = ["merge", "--model", str(model), *_lora_args(loras), "--unet-strength", f"{self.unet_strength:g}",
                "--te-strength", f"{self.te_strength:g}"]
        if self.precision:
            if self.precision not in PRECISIONS:
                raise UserError(f"precision must be one of {', '.join(PRECISIONS)} or empty (keep), "
                                f"got {self.precision!r}")
            args += ["--precision", self.precision]
        out_args, out = self._output(folders, f"{_stem(model)}-merged", "" if model.is_dir() else ".safetensors")
        return args + out_args, out

    def _merge_loras(self, folders: ToolFolders) -> tuple[list[str], Path]:
        loras = self._lora_paths(folders, 2)
        args = ["merge-loras", *_lora_args(loras)]
        if self.rank is not None:
            args += ["--rank", str(_rank(self.rank, "rank"))]
        out_args, out = self._output(folders, f"{_stem(loras[0][0])}-merged")
        return args + out_args, out

    def _resize(self, folders: ToolFolders) -> tuple[list[str], Path]:
        lora = self._lora_paths(folders, 1)[0][0]
        args = ["resize", "--lora", str(lora)]
        if self.rank is not None:
            args += ["--rank", str(_rank(self.rank, "rank"))]
        if self.dynamic_method:
            if self.dynamic_method not in DYNAMIC_METHODS or self.dynamic_value is None:
                raise UserError(f"dynamic rank: choose one of {', '.join(DYNAMIC_METHODS)} and give its value")
            args += ["--dynamic", f"{self.dynamic_method}={self.dynamic_value:g}"]
        elif self.rank is None:
            raise UserError("resize needs a rank, or a dynamic method and its value")
        if self.conv_rank is not None:
            args += ["--conv-rank", str(_rank(self.conv_rank, "conv rank"))]
        suffix = f"r{self.rank:g}" if not self.dynamic_method else self.dynamic_method
        out_args, out = self._output(folders, f"{_stem(lora)}-{suffix}")
        return args + out_args, out

    def _extract(self, folders: ToolFolders) -> tuple[list[str], Path]:
        base = folders.input_path(self.base, "base checkpoint")
        tuned = folders.input_path(self.tuned, "fine-tuned checkpoint")
        if self.rank is None:
            raise UserError("extract needs a rank: give the rank of the LoRA to extract")
        args = ["extract", "--base", str(base), "--tuned", str(tuned), "--rank", str(_rank(self.rank, "rank")),
                "--clamp-quantile", f"{self.clamp_quantile:g}"]
        if self.conv_rank is not None:
            args += ["--conv-rank", str(_rank(self.conv_rank, "conv rank"))]
        out_args, out = self._output(folders, f"{_stem(tuned)}-extracted")
        return args + out_args, out

    def _inspect(self, folders: ToolFolders) -> tuple[list[str], None]:
        lora = self._lora_paths(folders, 1)[0][0]
        return ["inspect", str(lora)], None


def _lora_args(loras: list[tuple[Path, float]]) -> list[str]:
    return [arg for path, strength in loras for arg in ("--lora", f"{path}:{strength:g}")]


def _rank(value: float, what: str) -> int:
    if value != int(value) or value < 1:
        raise UserError(f"{what} {value:g} is not a rank; give a whole number of 1 or more")
    return int(value)


def _stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._ -]", "_", path.stem if path.is_file() else path.name)[:80] or "output"


def job_folder(folders: ToolFolders, out: Path | None) -> Path:
    return out.parent if out is not None else folders.tools_dir / INSPECT_FOLDER


# The pickers' lists: (label, absolute path), newest runs first.

def lora_choices(folders: ToolFolders) -> list[tuple[str, str]]:
    """LoRAs of runs (newest first), then the tools' own outputs, then the --loras-dir folders'."""
    runs = _newest_first(folders.data_dir.glob(f"{RUNS_DIR}/*/*/*.safetensors"))
    made = [p for p in _newest_first(folders.tools_dir.glob("*/*.safetensors")) if _is_lora(p)]
    own = [p for root in folders.loras for p in _files(root, (".safetensors",)) if _is_lora(p)]
    return [(_label(folders, p), str(p)) for p in [*runs, *made, *own][:LISTED]]


def model_choices(folders: ToolFolders) -> list[tuple[str, str]]:
    """Checkpoints (.safetensors that are not LoRAs, .ckpt) and diffusers folders of the --models-dir folders, then
    those in the data folder (the demo model, merged outputs)."""
    found: list[Path] = []
    for root in (*folders.models, folders.data_dir):
        found += [p for p in _files(root, (".safetensors", ".ckpt"), with_folders=True)
                  if p.is_dir() or p.suffix == ".ckpt" or not _is_lora(p)]
    unique = list(dict.fromkeys(found))
    return [(_label(folders, p), str(p)) for p in unique[:LISTED]]


def _files(root: Path, suffixes: tuple[str, ...], with_folders: bool = False, depth: int = 4) -> list[Path]:
    """Files with ``suffixes`` under ``root`` (and diffusers folders, which hold model_index.json), sorted; a
    diffusers folder's own weight files are not listed apart."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        level = len(here.relative_to(root).parts)
        if with_folders and "model_index.json" in files:
            out.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (level == 0 and d in SKIPPED_FOLDERS)
                         and level < depth and not d.endswith("-state"))
        out += [here / f for f in sorted(files) if f.lower().endswith(suffixes) and not f.startswith(".")]
        if len(out) > LISTED:
            break
    return out


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0
    return sorted(paths, key=mtime, reverse=True)


def _is_lora(path: Path) -> bool:
    """A kohya LoRA: its header names lora_unet_/lora_te keys (read from the header only)."""
    try:
        header, _ = st_header.read_header(path)
    except (OSError, ValueError):
        return False
    return any(key.startswith(("lora_unet_", "lora_te")) for key in header)


def _label(folders: ToolFolders, path: Path) -> str:
    for root in (folders.data_dir, *folders.models, *folders.loras):
        if path.is_relative_to(root):
            return f"{root.name}/{path.relative_to(root).as_posix()}"
    return str(path)


@dataclass
class ToolStatus:
    """One job as the tab shows it."""

    job_id: str = ""
    operation: str = ""
    running: bool = False
    done: int = 0
    total: int = 0
    what: str = ""
    lines: list[str] = field(default_factory=list)  # the report, as the CLI prints it
    output: str = ""  # the file or folder written, once done
    line: str = ""  # one line: what the job is doing or how it ended
    error: bool = False
    stopped: bool = False

    @property
    def finished(self) -> bool:
        return bool(self.job_id) and not self.running


@dataclass
class _Job:
    job_id: str
    folder: Path
    out: Path | None
    popen: subprocess.Popen
    reader: ToolEventReader
    status: ToolStatus
    stop_asked: float | None = None
    ended: bool = False


class ToolJobs:
    """The one tool job of this app (or none). ``training_busy`` says whether a training run holds the GPU."""

    def __init__(self, folders: ToolFolders, training_busy: Callable[[], bool], python: str = sys.executable) -> None:
        self.folders = folders
        self.training_busy = training_busy
        self.python = python
        self._job: _Job | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)  # the child has its own process group: end it when the UI exits

    def start(self, request: ToolRequest) -> ToolStatus:
        """Start ``request``; UserError says why not (bad input, a job or a training run going)."""
        with self._lock:
            if self._job is not None and self._running(self._job):
                raise UserError("a tool job is running: wait for it or press Stop")
            if self.training_busy():
                raise UserError("a training run is going or queued: the tools would share its GPU and memory; "
                                "start this when the run has ended")
            args, out = request.command(self.folders)
            self._job = self._spawn(request.operation, args, out)
            return self._job.status

    def stop(self) -> str:
        with self._lock:
            job = self._job
            if job is None or not self._running(job):
                return "No tool job is running."
            _interrupt(job.popen)
            job.stop_asked = time.monotonic()
            return "Stopping: nothing is written under the output name."

    def poll(self) -> ToolStatus:
        with self._lock:
            if self._job is None:
                return ToolStatus()
            self._update(self._job)
            return self._job.status

    def close(self) -> None:
        """End a running job (the app closes)."""
        with self._lock:
            job = self._job
            if job is not None and job.popen.poll() is None:
                _interrupt(job.popen)
                try:
                    job.popen.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    _kill(job.popen)

    def _spawn(self, operation: str, args: list[str], out: Path | None) -> _Job:
        job_id = time.strftime("%Y%m%d-%H%M%S") + f"-{time.monotonic_ns() % 1000000:06d}"
        folder = job_folder(self.folders, out)
        folder.mkdir(parents=True, exist_ok=True)
        events = folder / EVENTS_FILE
        for old in (events, folder / LOG_FILE):  # the previous job of this output name
            old.unlink(missing_ok=True)
        cmd = [self.python, "-m", "training.tools", *args, "--events", str(events)]
        with open(folder / LOG_FILE, "ab") as log:
            popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=child_env(), **new_group_kwargs())
        status = ToolStatus(job_id, operation, running=True, line=f"{operation}: starting…")
        return _Job(job_id, folder, out, popen, ToolEventReader(events), status)

    def _running(self, job: _Job) -> bool:
        self._update(job)
        return job.status.running

    def _update(self, job: _Job) -> None:
        if job.ended:
            return
        for event in job.reader.read_new():
            _apply(job.status, event)
        if job.stop_asked is not None and time.monotonic() - job.stop_asked > STOP_GRACE_S:
            _kill(job.popen)
        code = job.popen.poll()
        if code is None:
            return
        for event in job.reader.read_new():  # what it wrote just before exiting
            _apply(job.status, event)
        job.ended = True
        job.status.running = False
        if job.stop_asked is not None and not job.status.output:
            _remove_leftovers(job.folder)
            job.status.stopped, job.status.error = True, False
            job.status.line = f"Stopped: {job.status.operation} wrote nothing under the output name."
        elif not job.status.output and not job.status.error and code != 0:
            job.status.error = True
            job.status.line = _last_line(job.folder / LOG_FILE) or f"the tool exited with status {code}"


def _apply(status: ToolStatus, event: object) -> None:
    match event:
        case ToolStart():
            status.line = f"{status.operation}: reading the input…"
        case ToolProgress(done=done, total=total, what=what):
            status.done, status.total, status.what = done, total, what
            status.line = f"{status.operation}: {done} of {total} {what}"
        case ToolLine(text=text):
            status.lines.append(text)
        case ToolDone(output=output):
            status.output = output
            status.line = f"Done: wrote {output}" if output else f"Done: {status.operation}"
        case ToolError(message=message):
            status.error = True
            status.line = message


def _interrupt(popen: subprocess.Popen) -> None:
    """Ctrl+C for the child's group: the tool stops and its atomic write removes the temp file."""
    if popen.poll() is not None:
        return
    try:
        if os.name == "nt":
            popen.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(popen.pid, signal.SIGINT)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _kill(popen: subprocess.Popen) -> None:
    if popen.poll() is not None:
        return
    try:
        if os.name == "nt":
            popen.kill()
        else:
            os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _remove_leftovers(folder: Path) -> None:
    """Temp files and folders a killed write left (``.<name>.….tmp``, ``.<name>.tmp-<pid>``): never an output."""
    for path in folder.glob(".*.tmp*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _last_line(log: Path) -> str:
    """The child's last output line: its one-line error when it ended before writing an event (a usage error)."""
    try:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " ".join(lines[-1].removeprefix("error: ").split()) if lines else ""
