"""JobSupervisor: starts training runs as background processes, queues them, stops them and watches them.

The run folder is the only contract (docs/architecture.md, "The run protocol"): the supervisor writes ``job.toml``,
touches ``control/`` flags and reads ``events.jsonl``; it never talks to the trainer any other way. Each run gets its
own process group (session on POSIX), so Stop can end ``accelerate launch`` workers too, and the UI's own Ctrl+C does
not reach the trainer. Because every verdict comes from files plus a pid check, a new supervisor on the same data dir
(the UI restarted, the browser closed) re-attaches to a running run and reports the finished ones.
No gradio, no torch: the UI process stays light and the supervisor is unit-tested with real dry-run processes.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.runs import (
    ACTIVE_STATUSES,
    HELD_TEXT,
    RUNS_DIR,
    RunState,
    RunSummary,
    closed_text,
    describe,
    failure_message,
    mark_closed,
    pid_reference,
    queued_runs,
    replay,
    run_dirs,
    settled_status,
    start_state,
    summarize,
    terminate_group,
)
from training.contract.atomic import write_atomic
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.control import Control
from training.contract.events import Event, EventReader
from training.contract.layout import (
    CANCELLED,
    EVENTS_FILE,
    JOB_FILE,
    LOG_FILE,
    PID_FILE,
    PRESET_FILE,
    QUEUED,
    TERMINATED,
)
from training.contract.processes import pid_alive

EXIT_GRACE_S = 10.0  # how long a Start waits for a finished run's process to exit before queueing behind it
QUEUE_TICK_S = 1.0  # how often the queue thread looks whether the active run has ended
CLOSE_GRACE_S = 60.0  # closing the UI: how long a run gets to save its LoRA and state before its group is ended
RECENT_RUNS = 6  # finished runs the queue view lists below the queued and running ones


@dataclass
class RunHandle:
    """What start() did: the run folder, and whether the job started ("starting") or waits ("queued", position
    1 = next)."""

    run_dir: Path
    status: str
    position: int | None = None
    pid: int | None = None


@dataclass
class RunSnapshot:
    """One poll: the events new since the previous poll of this run, plus the run's state so far."""

    run_dir: Path
    status: str
    events: list[Event]
    changed: bool
    state: RunState
    error: str | None = None
    queue_position: int | None = None
    held: bool = False  # queued before the UI restarted: waits until the user starts the queue

    @property
    def running(self) -> bool:
        """The trainer process is alive (starting or training)."""
        return self.status in ACTIVE_STATUSES

    @property
    def active(self) -> bool:
        """Worth polling again: running, or queued to start."""
        return self.running or self.status == "queued"

    step = property(lambda self: self.state.step)
    total_steps = property(lambda self: self.state.total_steps)
    epoch = property(lambda self: self.state.epoch)
    eta = property(lambda self: self.state.eta)
    images_per_s = property(lambda self: self.state.images_per_s)
    loss = property(lambda self: self.state.loss)
    smoothed = property(lambda self: self.state.smoothed)
    last_checkpoint = property(lambda self: self.state.last_checkpoint)
    final_path = property(lambda self: self.state.final_path)
    sample_paths = property(lambda self: self.state.sample_paths)

    @property
    def status_text(self) -> str:
        if self.held and self.status == "queued":
            return HELD_TEXT
        closed = closed_text(self.run_dir, self.state) if self.status == "stopped" else None
        return closed or describe(self.status, self.state, self.error, self.queue_position)


@dataclass
class QueueRow:
    """One line of the queue view: a queued, running or recently finished run, and what can be done to it."""

    run_dir: Path
    status: str
    text: str  # the status line, as RunSnapshot.status_text
    position: int | None = None  # queued: 1 = next
    held: bool = False
    resumable: bool = False  # stopped with a saved state

    @property
    def label(self) -> str:
        return f"{self.run_dir.parent.name} · {self.run_dir.name}"


@dataclass
class _Tracked:
    """Per-run bookkeeping: the event reader's byte offset lives here, so each poll returns only new lines."""

    run_dir: Path
    reader: EventReader
    state: RunState = field(default_factory=RunState)
    popen: subprocess.Popen | None = None
    last_status: str | None = None


class JobSupervisor:
    """Runs one training job at a time under ``data_dir/runs/<output_name>/<YYYYmmdd-HHMMSS>/``; later jobs queue.

    Creating a supervisor scans data_dir (discover) and re-attaches to a run that is still going."""

    def __init__(self, data_dir: Path, python: str = sys.executable, dry_run: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.python = python
        self.dry_run = dry_run
        self._tracked: dict[Path, _Tracked] = {}
        self._active: Path | None = None
        self._lock = threading.RLock()  # Gradio runs handlers (tick, Start, Stop) on several threads
        # Jobs queued by an earlier UI process are not started behind the user's back: they wait for release_held().
        self._held: set[Path] = set(queued_runs(self.data_dir))
        self._replays: dict[Path, tuple[tuple[int, int], RunState]] = {}
        self._queue_thread: threading.Thread | None = None
        self._queue_stop = threading.Event()
        self._closing = False  # the UI is closing: nothing more starts in this process
        self.discover()

    # --- starting
    def new_run_dir(self, output_name: str) -> Path:
        """A fresh, claimed run folder; a second start in the same second gets a -2, -3, ... suffix."""
        base = self.data_dir / RUNS_DIR / output_name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in itertools.count(1):
            run_dir = base / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                run_dir.mkdir(parents=True)
                return run_dir
            except FileExistsError:
                continue
        raise AssertionError("unreachable")

    def start(self, cfg: TrainConfig, preset: dict[str, Any] | None = None) -> RunHandle:
        """Write the job into a new run folder and start it, or queue it while another run is active.
        ``preset`` (name, family, loss_band) is kept beside the job, so a re-attached UI still draws the band."""
        with self._lock:
            run_dir = self.new_run_dir(cfg.output_name)
            save_config(cfg.model_copy(update={"output_dir": str(run_dir)}), run_dir / JOB_FILE)
            if preset:
                write_atomic(run_dir / PRESET_FILE, json.dumps(preset))
            self._let_finished_run_exit()
            write_atomic(run_dir / QUEUED, repr(time.time()))  # every job queues; an idle supervisor starts it now
            self._advance_queue()
            queue = queued_runs(self.data_dir)
            if run_dir in queue:
                return RunHandle(run_dir, "queued", position=queue.index(run_dir) + 1)
            popen = self._track(run_dir).popen
            return RunHandle(run_dir, "starting", pid=popen.pid if popen else None)

    def _let_finished_run_exit(self, timeout: float = EXIT_GRACE_S) -> None:
        """A run that wrote its last event (done, stopped, error) is only exiting. Wait a moment for it, so a Start
        or Resume right after Stop starts at once instead of queueing behind a run that is already over."""
        if self._active is None or replay(self._active).terminal is None:
            return
        tracked = self._track(self._active)
        deadline = time.monotonic() + timeout
        while self._alive(tracked) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _advance_queue(self) -> None:
        """Start the oldest queued job when no run is active (jobs held since a restart wait)."""
        if self._active is not None and self._alive(self._track(self._active)):
            return
        self._active = None
        queue = [] if self._closing else self.queue_order()
        if queue:
            self._launch(queue[0])

    def queue_order(self) -> list[Path]:
        """The queued jobs that will start, in order (not those held since a restart)."""
        return [run_dir for run_dir in queued_runs(self.data_dir) if run_dir not in self._held]

    def held(self) -> list[Path]:
        """Jobs queued before this UI process started, still waiting for the user to start the queue."""
        with self._lock:
            self._held &= set(queued_runs(self.data_dir))
            return sorted(self._held)

    def release_held(self) -> int:
        """Start the queue: the jobs held since the restart join it (the oldest starts when nothing runs).
        Returns how many were released."""
        with self._lock:
            count = len(self.held())
            self._held.clear()
            self._advance_queue()
            return count

    def busy(self) -> bool:
        """A run is going, or a job waits to start after it: a new Start would queue. A run that wrote its last event
        is over even while its process exits (start() waits for that)."""
        with self._lock:
            active = self._active
            going = (active is not None and self._alive(self._track(active))
                     and self._replayed(active).terminal is None)
            return going or bool(self.queue_order())

    def _launch(self, run_dir: Path) -> None:
        (run_dir / QUEUED).unlink(missing_ok=True)  # first, so a spawn failure cannot retry forever
        cmd = [self.python, "-m", "training", "--config", str(run_dir / JOB_FILE)]
        cmd += ["--dry-run"] if self.dry_run else []
        with open(run_dir / LOG_FILE, "ab") as log:
            log.write(f"$ {shlex.join(cmd)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=child_env(), **new_group_kwargs())
            except OSError as err:  # the run then reads as failed, with this line as the reason
                log.write(f"could not start the trainer: {err}\n".encode())
                return
        write_atomic(run_dir / PID_FILE, str(popen.pid))
        self._track(run_dir).popen = popen
        self._active = run_dir

    # --- control
    def stop(self, run_dir: Path, grace_s: float = 60) -> str:
        """Ask the run to stop (it saves the LoRA and its state, then exits); after grace_s, end its process group.
        A queued job is cancelled instead. Returns "cancelled", "stopping" or "not running"."""
        with self._lock:
            run_dir = Path(run_dir).resolve()
            if (run_dir / QUEUED).exists():
                (run_dir / QUEUED).unlink(missing_ok=True)
                (run_dir / CANCELLED).touch()
                self._held.discard(run_dir)
                return "cancelled"
            tracked = self._track(run_dir)
            if not self._alive(tracked):
                return "not running"
            Control(run_dir).request("stop")
        threading.Thread(target=self._enforce_stop, args=(tracked, grace_s), daemon=True,
                         name=f"stop {run_dir.name}").start()
        return "stopping"

    def _enforce_stop(self, tracked: _Tracked, grace_s: float) -> None:
        """Keep the stop flag set (the trainer clears control/ as it starts) and end the group after the grace."""
        deadline = time.monotonic() + grace_s
        control = Control(tracked.run_dir)
        while self._alive(tracked):
            if time.monotonic() >= deadline:
                self._terminate(tracked, grace_s)
                return
            if not control.is_set("stop"):
                control.request("stop")
            time.sleep(0.2)

    def _terminate(self, tracked: _Tracked, grace_s: float) -> None:
        pid = tracked.popen.pid if tracked.popen else (self._pid_reference(tracked.run_dir, tracked.state) or [None])[0]
        if pid is None:
            return
        write_atomic(tracked.run_dir / TERMINATED, f"stopped by force: the trainer had not finished its stop after "
                                                   f"{grace_s:g} s, so its processes were ended (no final save)")
        terminate_group(pid, lambda: self._alive(tracked))

    def request(self, run_dir: Path, flag: str) -> bool:
        """Ask a running run for samples now ("sample") or a LoRA save now ("save"). False when not running."""
        if flag not in ("sample", "save"):
            raise ValueError(f"request takes 'sample' or 'save', not {flag!r} (use stop() to stop)")
        with self._lock:
            run_dir = Path(run_dir).resolve()
            if not self._alive(self._track(run_dir)):
                return False
            Control(run_dir).request(flag)
            return True

    # --- watching
    def poll(self, run_dir: Path | None = None) -> RunSnapshot:
        """New events of a run since its last poll, and its state. Starts the next queued job when the active run
        has ended. Without run_dir: the active run, else the newest run."""
        with self._lock:
            self._advance_queue()
            run_dir = Path(run_dir).resolve() if run_dir else self._active or self._newest()
            if run_dir is None:
                return RunSnapshot(self.data_dir, "idle", [], False, RunState())
            tracked = self._track(run_dir)
            events, status, error = self._refresh(tracked)
            changed = bool(events) or status != tracked.last_status
            tracked.last_status = status
            queue = self.queue_order() if status == "queued" else []
            position = queue.index(run_dir) + 1 if run_dir in queue else None
            return RunSnapshot(run_dir, status, events, changed, tracked.state.copy(), error, position,
                               held=run_dir in self._held)

    def _refresh(self, tracked: _Tracked) -> tuple[list[Event], str, str | None]:
        alive = self._alive(tracked)  # before reading: a process found dead has written all it ever will
        events = self._read(tracked)
        return (events, *self._verdict(tracked.run_dir, tracked.state, tracked.popen, alive))

    def _verdict(self, run_dir: Path, state: RunState, popen: subprocess.Popen | None,
                 alive: bool) -> tuple[str, str | None]:
        """Status and error message; a process gone without a terminal event has failed."""
        status = settled_status(run_dir, state)
        if status is None:
            status = ("running" if state.started else "starting") if alive else "failed"
        if status != "failed":
            return status, None
        if state.terminal == "error":
            return status, state.error
        return status, failure_message(run_dir, popen.returncode if popen else None)

    def _read(self, tracked: _Tracked) -> list[Event]:
        events = tracked.reader.poll()
        for event in events:
            tracked.state.apply(event)
        return events

    def discover(self) -> list[RunSummary]:
        """Every run folder under data_dir, newest first, with its status; re-attaches to a run still going."""
        with self._lock:
            summaries = []
            for run_dir in run_dirs(self.data_dir):
                popen = self._tracked[run_dir].popen if run_dir in self._tracked else None
                # A finished or queued run needs no process check (the runs list is read on every page poll).
                settled = settled_status(run_dir, self._replayed(run_dir)) is not None
                alive = not settled and self._is_alive(run_dir, RunState(), popen)
                state = self._replayed(run_dir)  # after the check: a process found dead has written all it will
                status, error = self._verdict(run_dir, state, popen, alive)
                if status in ACTIVE_STATUSES and self._active is None:
                    self._active = run_dir  # re-attach: the next poll() returns its events from the beginning
                summaries.append(summarize(run_dir, state, status, error))
            return summaries

    def overview(self, recent: int = RECENT_RUNS) -> list[QueueRow]:
        """The queue view: queued jobs in start order (held ones first), the running run, then the newest finished
        runs. Each row names its own run folder, so a button on it acts on that run only."""
        with self._lock:
            order = self.queue_order()
            queued, running, finished = [], [], []
            for summary in self.discover():
                run_dir = summary.run_dir
                state = self._replayed(run_dir)
                held = run_dir in self._held and summary.status == "queued"
                position = order.index(run_dir) + 1 if run_dir in order else None
                snap = RunSnapshot(run_dir, summary.status, [], False, state, summary.error, position, held)
                row = QueueRow(run_dir, summary.status, snap.status_text, position, held,
                               summary.status == "stopped" and bool(state.state_path))
                if summary.status == "queued":
                    queued.append(row)
                elif summary.running:
                    running.append(row)
                else:
                    finished.append(row)
            in_order = queued_runs(self.data_dir)
            queued.sort(key=lambda r: (not r.held, in_order.index(r.run_dir) if r.run_dir in in_order else 0))
            return queued + running + finished[:recent]

    # --- the queue thread and closing
    def run_queue(self, every_s: float = QUEUE_TICK_S) -> None:
        """Advance the queue from a thread of this process, so queued jobs start when the active run ends whether or
        not a page is open (a page's polling only shows the queue). close() stops the thread."""
        with self._lock:
            if self._queue_thread is not None:
                return
            self._queue_stop.clear()
            self._queue_thread = threading.Thread(target=self._queue_loop, args=(every_s,), daemon=True,
                                                  name="run queue")
            self._queue_thread.start()

    def _queue_loop(self, every_s: float) -> None:
        while not self._queue_stop.wait(every_s):
            with self._lock:
                self._advance_queue()

    def close(self, how: str | None = None, grace_s: float = CLOSE_GRACE_S,
              echo: Callable[[str], None] = print) -> None:
        """Stop the queue thread. With ``how`` (the UI is being closed: "Ctrl+C", "SIGTERM"), also stop the running
        run so it saves its LoRA and state, waiting up to grace_s before its process group is ended; queued jobs
        stay queued and wait for the user at the next start. Says what it did through echo."""
        self._queue_stop.set()
        thread, self._queue_thread = self._queue_thread, None
        if thread is not None:
            thread.join(timeout=10)
        if how is None:
            return
        with self._lock:
            self._closing = True
            running = [s.run_dir for s in self.discover() if s.running]
            waiting = len(queued_runs(self.data_dir))
        for run_dir in running:
            self._close_run(run_dir, how, grace_s, echo)
        if waiting:
            echo(f"{waiting} queued run{'s' if waiting != 1 else ''} stay queued: the next start of LoraForge lists "
                 f"them for you to start or cancel.")

    def _close_run(self, run_dir: Path, how: str, grace_s: float, echo: Callable[[str], None]) -> None:
        mark_closed(run_dir, how)
        echo(f"Stopping {run_dir} (it saves its LoRA and state; up to {grace_s:g} s)...")
        self.stop(run_dir, grace_s=grace_s)
        tracked = self._track(run_dir)
        deadline = time.monotonic() + grace_s + 15  # the stop thread ends the group after grace_s
        while self._alive(tracked) and time.monotonic() < deadline:
            time.sleep(0.2)
        snap = self.poll(run_dir)
        echo(f"{run_dir.parent.name} · {run_dir.name}: {snap.status_text}")

    # --- helpers
    def _replayed(self, run_dir: Path) -> RunState:
        """replay(), re-read only when events.jsonl changed: the queue view lists runs on every page poll."""
        try:
            stat = (run_dir / EVENTS_FILE).stat()
            key = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = (-1, -1)
        cached = self._replays.get(run_dir)
        if cached is None or cached[0] != key:
            cached = (key, replay(run_dir))
            self._replays[run_dir] = cached
        return cached[1]

    def _track(self, run_dir: Path) -> _Tracked:
        if run_dir not in self._tracked:
            self._tracked[run_dir] = _Tracked(run_dir, EventReader(run_dir / EVENTS_FILE))
        return self._tracked[run_dir]

    def _alive(self, tracked: _Tracked) -> bool:
        return self._is_alive(tracked.run_dir, tracked.state, tracked.popen)

    def _is_alive(self, run_dir: Path, state: RunState, popen: subprocess.Popen | None) -> bool:
        """Our own child: its Popen. A run from before a UI restart: the pid of its start event, else the pid
        recorded at spawn. The start event is looked up without consuming what the next poll() must return."""
        if popen is not None:
            return popen.poll() is None
        ref = self._pid_reference(run_dir, state)
        return ref is not None and pid_alive(ref[0], existed_by=ref[1])

    @staticmethod
    def _pid_reference(run_dir: Path, state: RunState) -> tuple[int, float | None] | None:
        return pid_reference(run_dir, state if state.started else start_state(run_dir))

    def _newest(self) -> Path | None:
        found = run_dirs(self.data_dir)
        return found[0].resolve() if found else None


def child_env() -> dict[str, str]:
    """Unbuffered output, so trainer.log is current; the project root on the path, so ``-m training`` resolves
    even when the package is not installed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parent.parent)  # the project root, which holds app/ and training/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def new_group_kwargs() -> dict[str, Any]:
    """Popen arguments for a child in its own process group: Stop can end the whole group, and the UI's Ctrl+C
    does not reach it."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}
