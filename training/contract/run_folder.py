"""A run folder as a place to write: a folder this user can write into, used by one run at a time (a lock file
naming the process), tidied of what a killed run left half-written. Torch-free: the real run and the dry run
claim their folder through ``training.run.folder``, which adds the check against overwriting an earlier run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from training.contract.errors import UserError
from training.contract.layout import OLD_STATE_SUFFIX, STATE_SUFFIX, TEMP_SUFFIX, RunLayout
from training.contract.processes import pid_alive, process_start_time

UNREADABLE_LOCK_GRACE = 10.0  # seconds: a lock whose content is not there yet belongs to a run that is starting
TAKEOVER_TRIES = 3


# --- the folder itself ------------------------------------------------------------------------------------------

def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot become a run folder, in words, or None; changes nothing on disk (the check before any
    model loads). Read-only file systems are caught too: access() reports them even to root."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        return f"output_dir {path} is a file, not a folder: set output_dir to a folder (it is created if missing)"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return f"output_dir {path} cannot be created: {existing} is a file; choose another output_dir"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is where it would be created)"
        return (f"output_dir {path} is not writable{where}: choose a folder you can write to, or change its "
                f"permissions")
    return None


def unwritable(path: Path, err: OSError) -> UserError:
    reason = err.strerror or type(err).__name__
    return UserError(f"output_dir {path} is not writable ({reason.lower()}): choose a folder you can write to, or "
                     f"change its permissions")


def make_run_folder(path: Path) -> None:
    """Create ``path`` (and its parents); a one-line UserError naming the folder when it cannot be."""
    problem = folder_problem(path)
    if problem:
        raise UserError(problem)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise unwritable(path, err) from None


# --- the lock ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LockHolder:
    """The process a lock file names. ``started`` (its start time) tells a live run from a new process that got
    the same pid after the run died."""

    pid: int
    started: float | None
    host: str
    readable: bool = True

    @classmethod
    def me(cls) -> LockHolder:
        return cls(pid=os.getpid(), started=process_start_time(os.getpid()), host=socket.gethostname())

    @classmethod
    def read(cls, path: Path) -> LockHolder | None:
        """The holder written in ``path``; None when the file is gone."""
        try:
            text, mtime = path.read_text(encoding="utf-8"), path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:
            text, mtime = "", time.time()
        try:
            data = json.loads(text)
            return cls(pid=int(data["pid"]), started=data.get("started"), host=str(data.get("host", "")))
        except (ValueError, KeyError, TypeError):  # being written right now, or written by something else
            return cls(pid=0, started=mtime, host=socket.gethostname(), readable=False)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "readable"})

    def is_running(self) -> bool:
        if not self.readable:
            return time.time() - (self.started or 0) < UNREADABLE_LOCK_GRACE
        if self.host != socket.gethostname():
            return True  # a process on another machine cannot be checked from here: assume it runs
        if self.pid == os.getpid():
            return False  # this process: an earlier run in it that ended without letting go
        return pid_alive(self.pid, started=self.started)

    def describe(self) -> str:
        if not self.readable:
            return "a run that is starting"
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        since = f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}" if self.started else ""
        return f"PID {self.pid}{where}{since}"


@dataclass
class RunLock:
    """A run's hold on its folder. ``taken_over`` is the dead run whose lock this one replaced, if any."""

    path: Path
    holder: LockHolder
    taken_over: LockHolder | None = None

    def release(self) -> None:
        """Remove the lock file if it still names this process (never another run's)."""
        if LockHolder.read(self.path) == self.holder:
            self.path.unlink(missing_ok=True)


def write_new_file(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``; FileExistsError if it exists (the one atomic test-and-set every OS has)."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def remove_stale_lock(path: Path, stale: LockHolder) -> None:
    """Move the dead run's lock aside and delete it. Two runs may both find it stale: only one rename succeeds, and
    a lock that changed in between (a live run took it first) is put back."""
    aside = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return  # another starter moved it first
    if LockHolder.read(aside) != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def acquire_lock(run_dir: Path) -> RunLock:
    """Take the folder for this process, or refuse with a line naming the run that holds it. A lock left by a run
    that died (kill -9, power cut) is taken over; ``taken_over`` says whose it was."""
    path, me, taken_over = RunLayout(run_dir).lock, LockHolder.me(), None
    for _ in range(TAKEOVER_TRIES):
        try:
            write_new_file(path, me.to_json())
            return RunLock(path, me, taken_over)
        except FileExistsError:
            holder = LockHolder.read(path)
            if holder is None:
                continue  # it ended between our two looks
            if holder.is_running():
                raise UserError(f"output_dir {run_dir} is in use by another run ({holder.describe()}); wait for "
                                f"it to end or stop it, or choose another output_dir") from None
            remove_stale_lock(path, holder)
            taken_over = holder
        except OSError as err:
            raise unwritable(run_dir, err) from None
    raise UserError(f"output_dir {run_dir}: could not take {path.name}, other runs keep starting there; "
                    f"choose another output_dir")


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[RunLock]:
    lock = acquire_lock(run_dir)
    try:
        yield lock
    finally:
        lock.release()


# --- what a killed run leaves -----------------------------------------------------------------------------------

def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete the temp files and half-written state folders of runs killed mid-save (only while holding the lock:
    a live run's temp files are its saves in progress). A state caught between its two renames keeps the earlier,
    complete copy. Returns the names removed, for the log."""
    layout, removed = RunLayout(run_dir), []
    for path in layout.temp_leftovers():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(str(path.relative_to(run_dir)))
    for old in sorted(run_dir.glob(f"*{STATE_SUFFIX}{OLD_STATE_SUFFIX}")):
        final = old.with_name(old.name.removesuffix(OLD_STATE_SUFFIX))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old.name)
        else:
            old.rename(final)  # the new state never arrived: the earlier one is the good one
    return removed
