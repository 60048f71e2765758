"""``python -m training --config job.toml --dry-run``: a run without a model, for UI tests and demos.

It validates the config like a real run (minus the checks that need the base model or the dataset on disk), then
replays a realistic event stream into the run folder: status and start events, steps with a decaying noisy loss,
validation points, small real sample PNGs, placeholder LoRA files named like the real ones, the control flags and
Ctrl+C / SIGTERM, ending in ``done`` or ``stopped``. Torch-free on purpose: UI tests start it in well under a second.
The pace is ``LORAFORGE_DRY_RUN_STEP_SECONDS`` seconds per step (default 0.02).
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import sys
import time
from pathlib import Path

from training.contract import exit_codes
from training.contract.atomic import atomic_path, write_atomic, write_bytes_atomic
from training.contract.config import TrainConfig
from training.contract.config_io import save_config
from training.contract.control import Control
from training.contract.errors import UserError
from training.contract.events import EventWriter
from training.contract.layout import STATE_FILE, RunLayout, sample_file_name
from training.contract.lora_check import SelfCheck
from training.contract.prompts import load_prompts
from training.plan.preflight import check_outputs
from training.plan.schedule import Schedule, perform
from training.run.folder import claimed
from training.run.frame import report_crash, reporting
from training.run.metrics import LossEMA, Throughput

STEP_SECONDS_ENV = "LORAFORGE_DRY_RUN_STEP_SECONDS"
DEFAULT_STEP_SECONDS = 0.02
SYNTHETIC_IMAGES = 20  # the pretend dataset: a few steps per epoch at any batch size
SAMPLE_SIZE = 64  # pixels: real PNGs for the gallery, small enough to write in a millisecond


def model_family(cfg: TrainConfig) -> str:
    """The family a real run would report: read from the model's header or folder when it exists (torch-free)."""
    from training.models.detect import detect_family

    fallback = "sd2" if cfg.v2 else "sd1"
    path = Path(cfg.pretrained_model_name_or_path).expanduser()
    if not cfg.pretrained_model_name_or_path or not path.exists():
        return fallback
    try:
        return detect_family(path)
    except UserError:
        return fallback


def make_schedule(cfg: TrainConfig) -> Schedule:
    """The real run's schedule for a pretend dataset of SYNTHETIC_IMAGES images in one bucket."""
    return Schedule.build(cfg, batches_per_epoch=math.ceil(SYNTHETIC_IMAGES / cfg.train_batch_size))


def step_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(STEP_SECONDS_ENV, DEFAULT_STEP_SECONDS)))
    except ValueError:
        return DEFAULT_STEP_SECONDS


def check_config(cfg: TrainConfig) -> int:
    """The parts of preflight that need neither the base model nor the dataset; returns the step to resume at.
    (Whether output_dir holds an earlier run is checked once the folder is locked: training.run.folder.)"""
    check_outputs(cfg)
    if not cfg.resume:
        return 0
    return int(json.loads((Path(cfg.resume) / STATE_FILE).read_text(encoding="utf-8")).get("global_step", 0))


def write_placeholder_lora(path: Path, metadata: dict[str, str]) -> None:
    """A valid safetensors file without tensors: u64 header length, then a JSON header padded to 8 bytes."""
    header = json.dumps({"__metadata__": metadata}, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    write_bytes_atomic(path, struct.pack("<Q", len(header)) + header)


def write_sample_png(path: Path, step: int, index: int) -> None:
    """A small gradient whose colour shifts with the step, so the gallery visibly changes during a run."""
    from PIL import Image

    ramp = Image.linear_gradient("L").resize((SAMPLE_SIZE, SAMPLE_SIZE))
    flat = Image.new("L", ramp.size, (step * 37 + index * 90) % 256)
    with atomic_path(path) as tmp:
        Image.merge("RGB", (ramp, ramp.rotate(90), flat)).save(tmp, format="PNG")


def synthetic_loss(rng: random.Random, step: int, total: int) -> float:
    """A loss curve shaped like a LoRA run's: a fast early drop onto a noisy plateau."""
    base = 0.09 + 0.06 * math.exp(-step / max(1.0, total / 4))
    return max(0.005, base + rng.gauss(0.0, 0.025))


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    progress = min(1.0, step / max(1, total))
    shapes = {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
              "polynomial": (1 - progress) ** 2}
    return cfg.effective_unet_lr * shapes.get(cfg.lr_scheduler, 1.0)


class DryRun:
    """The synthetic counterpart of training.run.loop.Loop: same events, same files, same reactions to control/."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, events: EventWriter, control: Control, start_step: int):
        self.cfg, self.run_dir, self.events, self.control = cfg, run_dir, events, control
        self.layout = RunLayout(run_dir)
        self.schedule = make_schedule(cfg)
        self.step = start_step
        self.pace = step_seconds()
        self.rng = random.Random(cfg.seed + start_step)
        self.ema, self.speed = LossEMA(), Throughput()
        self.prompts = load_prompts(cfg.sample_prompts, cfg.resolution_wh)
        self.validated_at: int | None = None
        self.images_per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps
        self.last_checkpoint: str | None = None
        self.t0 = time.time()

    def announce(self) -> None:
        cfg, schedule = self.cfg, self.schedule
        self.events.emit("status", phase="loading", msg="preparing (dry run: no model or dataset is loaded)")
        save_config(cfg, self.layout.job)
        self.events.emit("start", run_id=self.run_dir.name, pid=os.getpid(), family=model_family(cfg),
                         total_steps=schedule.total_steps, total_epochs=schedule.total_epochs,
                         steps_per_epoch=schedule.steps_per_epoch, resumed_from=cfg.resume, start_step=self.step,
                         config=cfg.model_dump(mode="json"), dry_run=True,
                         dataset={"images": SYNTHETIC_IMAGES, "train_images_x_repeats": SYNTHETIC_IMAGES,
                                  "concepts": [], "buckets": {cfg.resolution.replace(",", "x"): SYNTHETIC_IMAGES},
                                  "validation": "train-subset" if schedule.validation_every else "off"})

    def run(self) -> str:
        """Returns "done" or "stopped", after writing the matching terminal event."""
        schedule = self.schedule
        self.announce()
        perform(self, schedule.at_start(self.step))
        self.events.emit("status", phase="training", msg="training")
        stop = False
        while not schedule.is_done(self.step) and not stop:
            time.sleep(self.pace)
            self.step += 1
            self.emit_step()
            stop = self.after_step()
        if stop and not schedule.is_done(self.step):
            return self.finish_stopped()
        path = perform(self, schedule.at_end(self.step, self.validated_at))
        self.events.emit("done", path=str(path), step=self.step)
        return "done"

    def emit_step(self) -> None:
        total = self.schedule.total_steps
        loss = synthetic_loss(self.rng, self.step, total)
        now = time.time()
        self.speed.record(now, self.step, self.step * self.images_per_step)
        lrs = {"unet": lr_at(self.cfg, self.step, total)}
        if self.cfg.trains_text_encoder:
            lrs["text_encoder"] = lrs["unet"] * self.cfg.effective_text_encoder_lr / self.cfg.effective_unet_lr
        self.events.emit("step", step=self.step, epoch=self.schedule.epoch_of(self.step), loss=round(loss, 6),
                         smoothed=round(self.ema.update(loss), 6), lr=lrs,
                         images_per_s=round(self.speed.images_per_second(), 3), elapsed=round(now - self.t0, 1),
                         eta=round(self.speed.eta(total - self.step), 1), peak_mem_gb=None)

    def after_step(self) -> bool:
        """The schedule's work, then the control flags, in the real loop's order; True when a stop was requested."""
        step, schedule = self.step, self.schedule
        perform(self, schedule.after_step(step))
        if self.control.take("sample"):
            self.sample(epoch=None)
        if self.control.take("save"):
            perform(self, [schedule.requested_save(step)])
        if step % schedule.steps_per_epoch == 0:
            perform(self, schedule.after_epoch(step // schedule.steps_per_epoch, step))
        return self.control.is_set("stop")

    def validate(self) -> None:
        loss = 0.1 + 0.05 * math.exp(-self.step / max(1.0, self.schedule.total_steps / 4)) + self.rng.gauss(0, 0.003)
        self.validated_at = self.step
        self.events.emit("val", step=self.step, loss=round(loss, 6), kind="train-subset")

    def sample(self, epoch: int | None) -> None:
        prompts = self.prompts or [None]
        self.events.emit("status", phase="sampling", msg=f"making {len(prompts)} sample image(s)")
        paths = []
        for i, prompt in enumerate(prompts):
            seed = prompt.seed if prompt else self.cfg.seed
            path = self.layout.samples / sample_file_name(self.cfg.output_name, self.step, epoch, i, seed)
            write_sample_png(path, self.step, i)
            paths.append(str(path))
        self.events.emit("sample", step=self.step, epoch=epoch, paths=paths)
        self.events.emit("status", phase="training", msg="training")

    def save(self, name: str, with_state: bool) -> Path:
        self.events.emit("status", phase="saving", msg=f"saving {name}")
        path = self.layout.lora(name)
        write_placeholder_lora(path, {"ss_output_name": self.cfg.output_name, "ss_steps": str(self.step),
                                      "ss_network_dim": str(self.cfg.network_dim), "loraforge_dry_run": "true"})
        self.last_checkpoint = str(path)
        check = SelfCheck.placeholder()
        self.events.emit("checkpoint", step=self.step, epoch=self.schedule.epochs_done(self.step), path=str(path),
                         check=check.summary(), check_result=check.to_event())
        if with_state:
            self.save_state(name)
        self.events.emit("status", phase="training", msg="training")
        return path

    def save_state(self, name: str) -> Path:
        state_dir = self.layout.state_dir(name)
        state_dir.mkdir(parents=True, exist_ok=True)
        state = {"global_step": self.step, "epoch": self.schedule.epochs_done(self.step), "dry_run": True,
                 "last_checkpoint": self.last_checkpoint}
        write_atomic(state_dir / STATE_FILE, json.dumps(state, indent=1))
        self.events.emit("state_saved", step=self.step, path=str(state_dir))
        return state_dir

    def finish_stopped(self) -> str:
        save = self.schedule.requested_save(self.step)
        path = perform(self, [save])
        self.events.emit("stopped", step=self.step, last_checkpoint=str(path),
                         state=str(self.layout.state_dir(save.name)))
        return "stopped"


def dry_run(cfg: TrainConfig, overwrite: bool = False) -> str:
    """Validate, then replay a run into cfg.output_dir. Returns "done" or "stopped"; raises UserError for bad input.
    The folder is claimed like a real run's: locked, checked against overwriting, tidied."""
    start_step = check_config(cfg)
    run_dir = Path(cfg.output_dir)
    with claimed(cfg, run_dir, overwrite) as notes:
        events = EventWriter(run_dir, echo=lambda line: print(line, file=sys.stderr, flush=True))
        control = Control(run_dir)
        control.clear()
        with reporting(events, control):
            for code, msg in notes:
                events.emit("warning", code=code, msg=msg)
            return DryRun(cfg, run_dir, events, control, start_step).run()


def main(cfg: TrainConfig, overwrite: bool = False) -> int:
    """The CLI's --dry-run branch, with the real CLI's exit codes: 0 done/stopped, 1 failed, 2 bad input, 130."""
    try:
        outcome = dry_run(cfg, overwrite)
    except UserError as err:
        if not err.reported:
            print(f"error: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return exit_codes.ABORTED
    except Exception as err:
        report_crash(err)
        return exit_codes.FAILED
    print(f"dry run {outcome}: {cfg.output_dir}")
    return exit_codes.DONE
