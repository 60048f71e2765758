"""A training run as a process sees it: the run folder, events, signals and how the run ends.

``run(cfg)`` is what ``python -m training`` (and the UI's background process) calls; the epochs and the step itself
live in ``training.run.loop``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from training.contract.config import TrainConfig
from training.contract.control import Control
from training.contract.events import EventWriter
from training.contract.layout import RunLayout, lora_name
from training.data.folder import DatasetScan
from training.plan.preflight import check_run_dir
from training.plan.schedule import perform
from training.run.checkpoints import TrainState, load_state
from training.run.folder import claimed
from training.run.frame import reporting
from training.run.loop import Loop, NonFiniteLoss
from training.run.prepare import prepare


class TrainingFailed(Exception):
    """The run failed in a way already reported in the event stream (exit status 1)."""

    reported = True


def console(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)  # above the progress bar instead of through it


def run(cfg: TrainConfig, run_dir: Path | None = None, scan: DatasetScan | None = None,
        overwrite: bool = False) -> str:
    """Train according to cfg. Returns "done" or "stopped"; raises UserError for bad input.

    ``scan`` is the dataset scan from preflight, when the caller already made one. ``overwrite`` (--overwrite)
    replaces an earlier run in the folder instead of refusing it."""
    from accelerate import PartialState

    dist = PartialState()  # one process per GPU under `accelerate launch`; sets up the process group early
    run_dir = Path(run_dir or cfg.output_dir)
    # The main process holds the folder; the others check it too, so bad input stops every rank, not only one.
    claim = claimed(cfg, run_dir, overwrite) if dist.is_main_process else contextlib.nullcontext([])
    with claim as notes:
        if not dist.is_main_process:
            check_run_dir(cfg, run_dir, overwrite)
        dist.wait_for_everyone()
        events = EventWriter(run_dir, enabled=dist.is_main_process, echo=console)
        control = Control(run_dir)
        if dist.is_main_process:
            control.clear()
        with reporting(events, control):
            for code, msg in notes:
                events.emit("warning", code=code, msg=msg)
            return _run(cfg, run_dir, events, control, scan)


def _run(cfg: TrainConfig, run_dir: Path, events: EventWriter, control: Control, scan: DatasetScan | None) -> str:
    from training.contract.config_io import save_config

    events.emit("status", phase="loading", msg="preparing")
    tr = prepare(cfg, run_dir, events, scan)
    if tr.parts.accelerator.is_main_process:
        save_config(cfg, RunLayout(run_dir).job)
    state = load_state(tr, Path(cfg.resume)) if cfg.resume else TrainState()
    facts, validation = tr.facts, tr.data.validation
    events.emit("start", run_id=run_dir.name, pid=os.getpid(), family=facts.family.name,
                total_steps=facts.schedule.total_steps, total_epochs=facts.schedule.total_epochs,
                steps_per_epoch=facts.schedule.steps_per_epoch, resumed_from=cfg.resume,
                start_step=state.global_step, config=cfg.model_dump(mode="json"),
                dataset={"images": len(facts.scan.items), "train_images_x_repeats": facts.scan.num_train_images,
                         "concepts": [vars(c) | {"path": str(c.path)} for c in facts.scan.concepts],
                         "buckets": {f"{w}x{h}": n for (w, h), n in sorted(facts.bucket_counts.items())},
                         "validation": validation.kind if validation else "off"})
    tr.parts.accelerator.init_trackers("lora")
    loop = Loop(tr, events, control, state)
    try:
        outcome = loop.run()
    except NonFiniteLoss as nan:
        return fail_non_finite(loop, nan)
    if outcome == "stopped":
        save = facts.schedule.requested_save(state.global_step)
        path = perform(loop, [save])
        events.emit("stopped", step=state.global_step, last_checkpoint=str(path) if path else None,
                    state=str(RunLayout(run_dir).state_dir(save.name)))
    else:
        path = loop.finish()
        events.emit("done", path=str(path) if path else None, step=state.global_step)
    tr.parts.accelerator.end_training()
    return outcome


def fail_non_finite(loop: Loop, nan: NonFiniteLoss) -> str:
    """Stop on the first NaN/Inf loss; keep the last weights known to be finite as a LoRA file."""
    loop.restore_snapshot()
    loop.state.global_step = loop.snapshot_step
    saved = None
    if loop.snapshot_step > 0:
        saved = loop.save(lora_name(loop.tr.cfg.output_name, step=loop.snapshot_step), with_state=False)
    files = ", ".join(Path(p).name for p in nan.paths[:4])
    msg = (f"loss became NaN/Inf at step {nan.step} (batch: {files}). Likely causes: learning rate or "
           f"network_alpha too high, fp16 overflow (use mixed_precision = 'bf16'), or a broken image. "
           f"Kept the last good LoRA from step {loop.snapshot_step}.")
    loop.events.emit("error", msg=msg, code="non_finite_loss", step=nan.step, last_checkpoint=str(saved) if saved
                     else loop.state.last_checkpoint, traceback=None)
    raise TrainingFailed(msg)
