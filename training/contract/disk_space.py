"""Free space for a run's saves: checked before a save whose size is known, and a full disk during a save turned
into one line that says where and how much, instead of torch's "unexpected pos 64 vs 0". Torch-free."""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path

from training.contract.errors import NoSpaceLeft

# Left free after a save, for the event lines and small files that follow it; a save that would eat into it is
# refused before it starts.
SPARE_BYTES = 256 * 1024
OUT_OF_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
OUT_OF_SPACE_TEXT = ("no space left", "not enough space", "quota exceeded")  # POSIX's and Windows' wording


def existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    return next((p for p in (path, *path.parents) if p.exists()), Path(path.anchor))


def mount_point(path: Path) -> Path:
    """The mount (drive) holding ``path``: what a person frees space on."""
    here = existing_ancestor(path).resolve()
    while not os.path.ismount(here) and here.parent != here:
        here = here.parent
    return here


def free_bytes(path: Path) -> int:
    """Bytes this user can still write where ``path`` is (or would be created)."""
    return shutil.disk_usage(existing_ancestor(path)).free


def folder_size(path: Path) -> int:
    """Bytes in the files under ``path`` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def megabytes(n: int) -> str:
    return f"{math.ceil(n / 1e5) / 10:g}" if n < 10**7 else f"{math.ceil(n / 1e6)}"


def no_space(folder: Path, what: str, needed: int) -> NoSpaceLeft:
    return NoSpaceLeft(f"no space left on {mount_point(folder)} while saving {what} (about {megabytes(needed)} MB "
                       f"needed); free some space there and run again (earlier saves are kept)")


def ensure_space(folder: Path, what: str, needed: int) -> None:
    """Refuse a save of ``needed`` bytes that would fill the disk, before a byte of it is written."""
    if free_bytes(folder) < needed + SPARE_BYTES:
        raise no_space(folder, what, needed)


def ran_out_of_space(err: BaseException, folder: Path, needed: int) -> bool:
    """Whether a save failed because the disk filled up. Python's own writes say so (ENOSPC, EDQUOT); torch's C++
    writer and safetensors' Rust one only say the write failed, so a full disk there is seen by what is left."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE_ERRNOS:
            return True
        if any(text in str(seen).lower() for text in OUT_OF_SPACE_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return free_bytes(folder) < max(needed, SPARE_BYTES)
    except OSError:
        return False
