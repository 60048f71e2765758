"""Claiming a run's folder before anything is written there, for the real run and the dry run alike: create it
(or say in one line why it cannot be), lock it against a second run, refuse to overwrite an earlier run's saves
(unless told to), and tidy what a killed run left half-written. Torch-free."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from training.contract.config import TrainConfig
from training.contract.layout import RunLayout
from training.contract.run_folder import locked, make_run_folder, remove_leftovers
from training.plan.preflight import check_run_dir

Note = tuple[str, str]  # (code, message) for a warning event once the event stream is open


@contextlib.contextmanager
def claimed(cfg: TrainConfig, run_dir: Path, overwrite: bool = False) -> Iterator[list[Note]]:
    """Hold ``run_dir`` for the run inside the block; yields what to say about it in the run's log."""
    make_run_folder(run_dir)
    with locked(run_dir) as lock:
        check_run_dir(cfg, run_dir, overwrite)
        notes: list[Note] = []
        if lock.taken_over:
            notes.append(("stale_lock", f"{run_dir} was locked by a run that is no longer running "
                                        f"({lock.taken_over.describe()}); it is this run's now"))
        if overwrite:
            replaced = clear_earlier_run(RunLayout(run_dir), cfg.output_name)
            if replaced:
                notes.append(("overwritten", f"--overwrite: deleted the earlier run's {', '.join(replaced)}"))
        removed = remove_leftovers(run_dir)
        if removed:
            notes.append(("leftovers_removed", f"removed {len(removed)} half-written file(s) left by an "
                                               f"interrupted run: {', '.join(removed)}"))
        yield notes


def clear_earlier_run(layout: RunLayout, output_name: str) -> list[str]:
    """--overwrite: the earlier run's event log, LoRA files and states of this output_name go, so the folder shows
    only the new run. Other files (samples, logs, LoRAs of other names) stay."""
    doomed = [p for p in (layout.events,) if p.exists()] + layout.saves_of(output_name)
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return [p.name for p in doomed]
