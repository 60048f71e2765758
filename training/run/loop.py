"""The training loop. One code path for the CLI, the UI's background runs and multi-GPU:

    python -m training --config run.toml
    accelerate launch --num_processes 2 -m training --config run.toml

The step keeps everything on the device: losses are collected on the GPU and read back every READBACK_EVERY steps
(one host synchronisation for many steps), so the GPU never waits for Python to print a number.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from training.contract.control import Control
from training.contract.events import EventWriter
from training.contract.layout import RunLayout
from training.contract.prompts import load_prompts
from training.models.conditioning import TextEmbeds, add_time_ids
from training.models.text import encode_text
from training.plan.schedule import perform
from training.run.checkpoints import TrainState, old_saves, remove_saves, save_lora_file, save_state
from training.run.compiled import CompilePhase, bucket_label
from training.run.loss import input_noise, per_sample_loss, random_timesteps, sample_noise
from training.run.max_norm import MaxNorm, NormStats
from training.run.metrics import LossEMA, Throughput
from training.run.parts import StepParts, Trainer
from training.run.samples import generate_samples
from training.run.validation import validation_loss

READBACK_EVERY = 10  # steps between host read-backs of the loss (NaN checks, events, progress bar)


# the step event's max-norm fields -> kohya's TensorBoard tags for them
MAX_NORM_TAGS = {"keys_scaled": "max_norm/keys_scaled", "average_key_norm": "norm/avg_key_norm",
                 "max_key_norm": "max_norm/max_key_norm"}


def read_norms(stats: list[NormStats | None]) -> list[dict[str, float] | None]:
    """The max-norm statistics of the pending steps as numbers, in one transfer from the device."""
    present = [s for s in stats if s is not None]
    if not present:
        return [None] * len(stats)
    rows = torch.stack([torch.stack([s.keys_scaled.float(), s.average_key_norm.float(), s.max_key_norm.float()])
                        for s in present]).cpu().tolist()
    numbers = iter(rows)
    out: list[dict[str, float] | None] = []
    for s in stats:
        if s is None:
            out.append(None)
            continue
        keys, average, largest = next(numbers)
        out.append({"keys_scaled": int(keys), "average_key_norm": round(average, 6), "max_key_norm": round(largest, 6)})
    return out


class NonFiniteLoss(Exception):
    def __init__(self, step: int, paths: list[str]) -> None:
        super().__init__(step, paths)
        self.step, self.paths = step, paths


def conditioning(parts: StepParts, captions: list[str]) -> TextEmbeds:
    if parts.text_cache is not None:
        return TextEmbeds.stack([parts.text_cache[c] for c in captions])
    return encode_text(parts.text_encoders, parts.tokenizers, captions, parts.settings.clip_skip)


def batch_time_ids(batch: dict) -> torch.Tensor:
    """SDXL's per-image (original size, crop, target size), as the dataset reported them."""
    return add_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])


def batch_latents(parts: StepParts, batch: dict) -> torch.Tensor:
    if batch.get("latents") is not None:
        return batch["latents"].to(parts.accelerator.device, non_blocking=True)
    vae = parts.vae
    pixels = batch["pixel_values"].to(parts.accelerator.device, vae.dtype, non_blocking=True)
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.sample().float() * vae.config.scaling_factor


def batch_mask(parts: StepParts, batch: dict) -> torch.Tensor | None:
    """The batch's loss masks at latent size ([B, h, w], see training/data/masks.py), when the run uses them."""
    mask = batch.get("mask")
    return None if mask is None else mask.to(parts.accelerator.device, non_blocking=True)
def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The batch's loss: each sample's loss times its weight (prior_loss_weight for a regularisation image, else 1),
    averaged over the batch as kohya does (the weights are not normalised)."""
    if weights is None:
        return losses.mean()
    return (losses * weights.to(losses.device, losses.dtype)).mean()


def train_step(parts: StepParts, batch: dict) -> torch.Tensor:
    """One forward/backward (and an optimizer step when accumulation completes). Returns the loss on the device."""
    acc, settings = parts.accelerator, parts.settings
    with acc.accumulate(*parts.trained_models):
        latents = batch_latents(parts, batch).to(parts.weight_dtype)
        noise_options = settings.noise
        noise = sample_noise(latents, parts.generator, noise_options.noise_offset, noise_options)
        timesteps = random_timesteps(latents.shape[0], parts.noise_scheduler, parts.generator, latents.device,
                                     noise_options)
        noisy_with = input_noise(noise, parts.generator, noise_options)
        with acc.autocast():
            cond = conditioning(parts, batch["caption"])
            time_ids = batch_time_ids(batch) if cond.pooled is not None else None  # SDXL only
            losses = per_sample_loss(parts.unet, parts.noise_scheduler, latents, cond, noise, timesteps,
                                     settings.min_snr_gamma, time_ids, options=settings.loss,
                                     noisy_with=noisy_with, mask=batch_mask(parts, batch))
            loss = weighted_mean(losses, batch.get("loss_weight"))
        acc.backward(loss)
        if acc.sync_gradients and settings.max_grad_norm > 0:
            acc.clip_grad_norm_(parts.params, settings.max_grad_norm)
        parts.optimizer.step()
        parts.lr_scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return hash((seed, epoch, batch, rank)) % 2**63  # int tuples hash the same in every process and run


class Loop:
    """Runs the epochs and everything periodic around the step: read-backs, validation, samples, saves, stop."""

    def __init__(self, tr: Trainer, events: EventWriter, control: Control, state: TrainState) -> None:
        self.tr, self.events, self.control, self.state = tr, events, control, state
        self.parts, self.data, self.schedule = tr.parts, tr.data, tr.facts.schedule
        self.ema = LossEMA(**state.ema) if state.ema else LossEMA()
        self.speed = Throughput()
        # (step, epoch, loss, paths, max-norm statistics): device values waiting for the next read-back
        self.pending: list[tuple[int, int, torch.Tensor, list[str], NormStats | None]] = []
        limit = tr.cfg.scale_weight_norms
        self.max_norm = None if limit is None else MaxNorm(
            [tr.parts.accelerator.unwrap_model(m) for m in tr.parts.trained_models], limit)
        self.snapshot = [p.detach().clone() for p in tr.parts.params]  # last LoRA weights known to be finite
        self.snapshot_step = state.global_step
        self.images = 0
        self.t0 = time.time()
        self.prompts = load_prompts(tr.cfg.sample_prompts, tr.cfg.resolution_wh)
        self.stop_requested = False
        self.bar = None
        self.compile_phase = CompilePhase(events, tr.cfg.torch_compile)

    # --- host read-back: the only place losses leave the GPU
    def readback(self) -> None:
        if not self.pending:
            return
        losses = torch.stack([p[2] for p in self.pending]).float()
        if self.parts.accelerator.num_processes > 1:
            losses = self.parts.accelerator.reduce(losses, "mean")  # every rank sees the same values and NaN verdict
        values = losses.cpu().tolist()
        norms = read_norms([p[4] for p in self.pending])
        now = time.time()
        for (step, epoch, _, paths, _), loss, norm in zip(self.pending, values, norms, strict=True):
            if not math.isfinite(loss):
                self.pending.clear()
                raise NonFiniteLoss(step, paths)
            self.emit_step(step, epoch, loss, now, norm)
        self.pending.clear()
        for snap, p in zip(self.snapshot, self.parts.params, strict=True):
            snap.copy_(p.detach())
        self.snapshot_step = self.state.global_step

    def emit_step(self, step: int, epoch: int, loss: float, now: float, norm: dict[str, float] | None = None) -> None:
        acc = self.parts.accelerator
        norm = norm or {}
        smoothed = self.ema.update(loss)
        self.speed.record(now, step, self.images)
        remaining = self.schedule.total_steps - step
        lrs = dict(zip(self.tr.facts.group_names, self.parts.lr_scheduler.get_last_lr(), strict=False))
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        self.events.emit("step", step=step, epoch=epoch + 1, loss=round(loss, 6), smoothed=round(smoothed, 6),
                         lr=lrs, images_per_s=round(self.speed.images_per_second(), 3),
                         elapsed=round(now - self.t0, 1), eta=round(self.speed.eta(remaining), 1),
                         peak_mem_gb=None if peak is None else round(peak, 3), **norm)
        tags = {MAX_NORM_TAGS[k]: v for k, v in norm.items()}
        acc.log({"loss": loss, "loss/smoothed": smoothed, **{f"lr/{k}": v for k, v in lrs.items()}, **tags},
                step=step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{smoothed:.4f}")

    # --- periodic work
    def after_step(self) -> None:
        step = self.state.global_step
        single = self.parts.accelerator.num_processes == 1
        at_readback = len(self.pending) >= READBACK_EVERY
        if at_readback:
            self.readback()
        perform(self, self.schedule.after_step(step))
        # Flags are a few stat calls: every step on one GPU; with several, only where the ranks sync anyway.
        if single or at_readback:
            stop, sample, save = self.requested_flags()
            if sample:
                self.sample(epoch=None)
            if save:
                perform(self, [self.schedule.requested_save(step)])
            self.stop_requested = self.stop_requested or stop

    def requested_flags(self) -> list[bool]:
        """Stop/sample/save requests as the main process sees them, shared so every rank acts on the same step."""
        acc = self.parts.accelerator
        flags = [False, False, False]
        if acc.is_main_process:
            flags = [self.control.is_set("stop"), self.control.take("sample"), self.control.take("save")]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            flags = broadcast_object_list(flags)
        return flags

    def finish(self) -> Path | None:
        """After the last step: the schedule's final validation and the final LoRA; returns its path."""
        validated_at = int(self.state.val_history[-1][0]) if self.state.val_history else None
        return perform(self, self.schedule.at_end(self.state.global_step, validated_at))

    def validate(self) -> None:
        parts, validation = self.parts, self.data.validation
        self.readback()
        if validation is None:
            return
        with self.compile_phase.first("validation"):
            loss = validation_loss(validation, parts.unet, parts.text_encoders, self.tr.base, self.tr.cfg.clip_skip,
                                   parts.text_cache, parts.weight_dtype)
        self.state.val_history.append([self.state.global_step, loss])
        self.events.emit("val", step=self.state.global_step, loss=round(loss, 6), kind=validation.kind)
        parts.accelerator.log({"loss/validation": loss}, step=self.state.global_step)

    def sample(self, epoch: int | None) -> None:
        tr, parts, acc = self.tr, self.parts, self.parts.accelerator
        if not self.prompts or not acc.is_main_process:
            return
        self.readback()
        self.events.emit("status", phase="sampling", msg=f"making {len(self.prompts)} sample image(s)")
        device = acc.device
        encoders = [acc.unwrap_model(e) for e in parts.text_encoders]
        tr.base.vae.to(device)
        for encoder in encoders:
            encoder.to(device)
        unet = acc.unwrap_model(parts.unet, keep_torch_compile=False)  # sample sizes are shapes training never sees
        paths = generate_samples(tr.base, unet, encoders, self.prompts,
                                 tr.cfg.sample_sampler, tr.cfg.clip_skip, RunLayout(tr.run_dir).samples,
                                 tr.cfg.output_name, self.state.global_step, epoch, device, parts.weight_dtype)
        if self.data.latent_cache is not None:
            tr.base.vae.to("cpu")
        if parts.text_cache is not None:
            for encoder in encoders:
                encoder.to("cpu")
        self.events.emit("sample", step=self.state.global_step, epoch=epoch, paths=[str(p) for p in paths])
        self.events.emit("status", phase="training", msg="training")

    def save(self, name: str, with_state: bool) -> Path | None:
        tr = self.tr
        self.readback()
        self.events.emit("status", phase="saving", msg=f"saving {name}")
        path = None
        if self.parts.accelerator.is_main_process:
            path, check = save_lora_file(tr, self.state, name)
            self.state.last_checkpoint = str(path)
            # epoch: epochs completed at save time, as in the file's ss_epoch (not the step events' 1-based epoch)
            epoch = self.schedule.epochs_done(self.state.global_step)
            self.events.emit("checkpoint", step=self.state.global_step, epoch=epoch, path=str(path),
                             check=check.summary(), check_result=check.to_event())
        if with_state:
            self.state.ema = vars(self.ema).copy()
            state_dir = save_state(tr, self.state, name)
            self.events.emit("state_saved", step=self.state.global_step, path=str(state_dir))
        if self.parts.accelerator.is_main_process:
            self.remove_old_saves(name)
        self.events.emit("status", phase="training", msg="training")
        return path

    def remove_old_saves(self, saved: str) -> None:
        """save_last_n_epochs / save_last_n_steps (and their _state forms): older intermediate saves go."""
        step = self.state.global_step
        old = old_saves(self.tr.run_dir, self.tr.cfg, saved, step, self.schedule.epochs_done(step))
        if old:
            remove_saves(old)
            self.events.emit("status", phase="saving",
                             msg=f"removed older saves (save_last_n_*): {', '.join(p.name for p in old)}")

    def restore_snapshot(self) -> None:
        for snap, p in zip(self.snapshot, self.parts.params, strict=True):
            p.data.copy_(snap)

    # --- the epochs
    def train_epoch(self, epoch: int) -> None:
        """Steps through one epoch, or what is left of it after a resume; returns early on stop or at the end."""
        state, data, acc = self.state, self.data, self.parts.accelerator
        # Resuming mid-epoch: the sampler skips the batches already trained (their images are never loaded).
        data.sampler.begin_epoch(epoch, start_batch=state.batch_in_epoch * acc.num_processes)
        data.dataloader.set_epoch(epoch)  # accelerate passes its own pass counter on to the dataset otherwise
        for batch in data.dataloader:
            # Global RNG (LoRA dropout) seeded from the position in the run, so a resumed run draws the same masks
            # whatever else touched the RNG in between.
            torch.manual_seed(batch_seed(self.tr.cfg.seed, epoch, state.batch_in_epoch, acc.process_index))
            with self.compile_phase.first(bucket_label(batch)):
                loss = train_step(self.parts, batch)
            state.batch_in_epoch += 1
            self.images += len(batch["caption"]) * acc.num_processes
            if not acc.sync_gradients:
                continue
            norms = self.max_norm.apply() if self.max_norm is not None else None  # after the optimizer's step
            state.global_step += 1
            self.pending.append((state.global_step, epoch, loss, batch["path"], norms))
            self.after_step()
            if self.schedule.is_done(state.global_step) or self.stop_requested:
                return

    def run(self) -> str:
        """Returns "done" or "stopped"."""
        state = self.state
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.schedule.total_steps, initial=state.global_step, disable=None if
                        self.parts.accelerator.is_main_process else True, desc="training", unit="step")
        perform(self, self.schedule.at_start(state.global_step))
        self.events.emit("status", phase="training", msg="training")
        for model in self.parts.trained_models:
            model.train()  # from_pretrained leaves models in eval mode: LoRA dropout would be off
        while not self.schedule.is_done(state.global_step) and not self.stop_requested:
            epoch = state.epoch
            self.train_epoch(epoch)
            if state.batch_in_epoch >= len(self.data.dataloader):  # the epoch ran to its end
                state.epoch, state.batch_in_epoch = epoch + 1, 0
                self.readback()
                perform(self, self.schedule.after_epoch(state.epoch, state.global_step))
        self.readback()
        self.bar.close()
        return "stopped" if self.stop_requested and not self.schedule.is_done(state.global_step) else "done"
