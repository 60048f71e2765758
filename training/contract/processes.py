"""Whether a process named by its pid is still running. Torch-free: the UI asks it about a run from before a
restart, the engine about the holder of a run folder's lock.

psutil (which accelerate brings) answers when installed. Without it: POSIX kill(pid, 0) plus Linux's /proc status
for zombies, or OpenProcess on Windows, where os.kill(pid, 0) would send CTRL_C_EVENT instead of probing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

START_TIME_TOLERANCE = 1.0  # seconds: the same process reports the same start time give or take rounding
EXISTED_BY_SLACK = 2.0  # seconds: clocks are read at different moments by the process and by whoever recorded it


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started (Unix time), or None where psutil is missing or the process is gone."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except ImportError:
        return None
    except Exception:  # NoSuchProcess, AccessDenied
        return None


def pid_alive(pid: int, *, started: float | None = None, existed_by: float | None = None) -> bool:
    """Whether ``pid`` is a live process. A zombie (exited, not yet collected by its parent) is not. ``started``,
    its start time when it was recorded, and ``existed_by``, a time it was known to be running, each tell the
    process from a newer one that got the same pid; they are checked only where psutil can tell start times."""
    try:
        import psutil
    except ImportError:
        return _windows_pid_alive(pid) if os.name == "nt" else _posix_pid_alive(pid)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return _same_process(proc.create_time(), started, existed_by)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's process: it exists


def _same_process(create_time: float, started: float | None, existed_by: float | None) -> bool:
    if started is not None and abs(create_time - started) >= START_TIME_TOLERANCE:
        return False
    return existed_by is None or create_time <= existed_by + EXISTED_BY_SLACK


def _posix_pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    with contextlib.suppress(OSError):  # Linux: a zombie has exited, it just has not been reaped
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    process_query_limited_information, still_active, error_access_denied = 0x1000, 259, 5
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return ctypes.get_last_error() == error_access_denied  # exists but is not ours to open
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return False
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)
