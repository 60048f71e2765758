"""One answer to "is this pid still our process?" for the UI (a run from before a restart) and the run lock (a
folder's holder). Real child processes; each case runs with psutil and again without it, the way a machine without
accelerate's psutil sees it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from training.contract.processes import pid_alive, process_start_time
from training.contract.run_folder import LockHolder

posix_only = pytest.mark.skipif(os.name == "nt", reason="zombies and waitid are POSIX")


@pytest.fixture(params=["psutil", "no psutil"])
def probe(request, monkeypatch) -> str:
    if request.param == "no psutil":
        monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    return request.param


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited and that nobody has collected yet."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # waits for the exit, leaves the child uncollected
    yield proc.pid
    proc.wait()


def test_a_live_process_is_alive(probe):
    assert pid_alive(os.getpid())


def test_an_exited_and_collected_child_is_dead(probe):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)


@posix_only
def test_a_zombie_child_is_dead(probe, zombie):
    assert not pid_alive(zombie)


@posix_only
def test_a_lock_held_by_a_zombie_is_free(probe, zombie):
    holder = LockHolder(pid=zombie, started=None, host=LockHolder.me().host)
    assert not holder.is_running()


def test_a_reused_pid_with_another_start_time_is_not_the_recorded_process():
    started = process_start_time(os.getpid())
    assert started is not None  # psutil is installed with the dev extra
    assert pid_alive(os.getpid(), started=started)
    assert not pid_alive(os.getpid(), started=started - 3600)  # the recorded process started an hour earlier
    assert not pid_alive(os.getpid(), existed_by=time.time() - 3600)  # known running before this one started
    assert pid_alive(os.getpid(), existed_by=time.time())
