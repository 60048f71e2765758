"""Files that appear under their final name only when complete, so a crash, Stop or full disk never leaves half a
file where a LoRA, caption, config or image was expected: write to a temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

NEW_FILE_MODE = 0o644  # mkstemp makes 0600 files; a LoRA copied to a WebUI folder must be readable by the WebUI


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` for any writer (PIL, safetensors, shutil); it replaces ``path`` when the block
    ends without error and is removed otherwise. The file keeps the mode of the one it replaces."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else NEW_FILE_MODE)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    """``fsync``: also wait until the bytes are on disk (a LoRA after hours of training is worth the wait)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Text (UTF-8) written atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))
