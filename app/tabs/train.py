"""Train: Start / Stop / Resume and the live view of the run, polled from its folder with gr.Timer.

No generator streams the run (architecture §5.2): the trainer is a child process, the Timer re-reads its events,
and a page reload or a second tab re-attaches through demo.load. Handlers return messages, never tracebacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.form import values_to_config
from app.guidance import diagnose
from app.model_check import family_problem
from app.plots import loss_figure
from app.runs import RUNS_DIR, log_tail, replay
from app.supervisor import RunSnapshot
from app.tabs.context import AppContext, RunRecord, form_handler
from training.config import TrainConfig
from training.errors import UserError

POLL_SECONDS = 1.0
STATUS_ELEM = "run-status"


def check_paths(ctx: AppContext, cfg: TrainConfig) -> str | None:
    """The checks the trainer makes first (model and dataset paths, sample prompts, ...), so a mistake shows now,
    not as a failed run. A dry run loads no model or dataset, so it gets the dry run's own, smaller check."""
    # Imported here: the dry run's checks and the dataset scan are only needed on Start.
    from training.dry_run import check_config
    from training.preflight import preflight

    check = check_config if ctx.settings.dry_run else preflight
    try:
        check(cfg.model_copy(update={"output_dir": str(ctx.settings.data_dir / RUNS_DIR)}))
    except UserError as err:
        return str(err)
    return None


def start_job(ctx: AppContext, values: dict[str, Any], preset: dict[str, Any] | None = None) -> str:
    """Validate the form and start (or queue) the run. Returns the status line to show."""
    cfg, error = values_to_config(values)
    if cfg is None:
        return f"**Not started:** {error}"
    error = check_paths(ctx, cfg) or (None if ctx.settings.dry_run else
                                      family_problem(cfg.pretrained_model_name_or_path or "", preset))
    if error:
        return f"**Not started:** {error}"
    try:
        handle = ctx.supervisor.start(cfg, preset)
    except (OSError, UserError) as err:
        return f"**Not started:** {err}"
    if handle.status == "queued":
        return f"**queued** (position {handle.position}): starts when the current run ends · `{handle.run_dir}`"
    return f"**started** · `{handle.run_dir}`"


def progress_text(snap: RunSnapshot) -> str:
    s = snap.state
    if not s.started:
        return ""
    parts = [f"step {s.step}/{s.total_steps or '?'}", f"epoch {s.epoch}/{s.total_epochs or '?'}"]
    if s.eta is not None and snap.running:
        parts.append(f"ETA {int(s.eta) // 60}m {int(s.eta) % 60:02d}s")
    if s.images_per_s:
        parts.append(f"{s.images_per_s:.2f} images/s")
    return " · ".join(parts)


def guidance_text(record: RunRecord, snap: RunSnapshot) -> str:
    d = diagnose(record.steps, record.vals, record.band, snap.total_steps, record.error)
    best = f" Best save by validation: step {d.best_step}." if d.best_step is not None else ""
    return f"**{d.headline}** {d.advice}{best}"


def view(ctx: AppContext, seen: dict[str, Any] | None) -> tuple[Any, ...]:
    """One poll: status, progress, chart, guidance, samples, log, timer and what this session has drawn.
    The chart and gallery are redrawn only when the run changed since this session last drew them."""
    snap = ctx.supervisor.poll()
    record = ctx.history.feed(snap)
    timer = gr.Timer(active=snap.active)
    if snap.status == "idle":
        return ("No run yet. Fill the form (or pick a preset) and press Start.", "", gr.skip(), "", gr.skip(), "",
                timer, seen)
    mark = {"run": str(snap.run_dir), "version": record.version}
    fresh = mark != (seen or {})
    detail = snap.status_text.removeprefix(snap.status).removeprefix(":").strip()  # "done: x" -> "x"
    status = f"**{snap.status}** · {detail}" if detail else f"**{snap.status}**"
    chart = loss_figure(record.steps, record.vals, record.band) if fresh else gr.skip()
    gallery = list(snap.sample_paths) if fresh else gr.skip()
    return (status, progress_text(snap), chart, guidance_text(record, snap), gallery, log_tail(snap.run_dir),
            timer, mark)


def build_train_tab(ctx: AppContext) -> Attach:
    with gr.Row():
        ctx.components["output_name"].render()
        start = gr.Button("Start", variant="primary", elem_id="start-btn", scale=0)
        stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=0)
        resume = gr.Button("Resume", elem_id="resume-btn", scale=0)
    message = gr.Markdown(elem_id="start-message")
    status = gr.Markdown("No run yet.", elem_id=STATUS_ELEM)
    progress = gr.Markdown(elem_id="run-progress")
    chart = gr.Plot(label="Loss", elem_id="loss-chart")
    guidance = gr.Markdown(elem_id="guidance")
    samples = gr.Gallery(label="Samples", interactive=False, columns=6, height=280, object_fit="contain",
                         elem_id="samples")
    log = gr.Textbox(label="Trainer log (last lines)", lines=8, max_lines=15, interactive=False, elem_id="log-tail")
    timer = gr.Timer(POLL_SECONDS, active=False)
    seen = gr.State(None)

    def start_run(values: dict[str, Any]) -> tuple[str, Any]:
        """Start a training run with these settings (unset ones: the form's values), or queue it."""
        preset = values.pop("preset", None)
        text = start_job(ctx, values, preset)
        return text, gr.Timer(active=not text.startswith("**Not"))

    def stop_run() -> str:
        snap = ctx.supervisor.poll()
        if not snap.active:
            return "Nothing is running."
        outcome = ctx.supervisor.stop(snap.run_dir)
        if outcome == "stopping":
            return "Stopping: the trainer finishes its step, saves the LoRA and its state, then ends."
        return f"{outcome}: `{snap.run_dir}`"

    def resume_run(values: dict[str, Any]) -> tuple[str, Any]:
        """Continue the last stopped run from its saved state, in a new run folder."""
        state_path = _last_state(ctx)
        if state_path is None:
            return "**Not resumed:** the last run did not stop with a saved state (Stop saves one).", gr.skip()
        return start_run({**values, "resume": state_path})

    def poll(seen_mark: dict[str, Any] | None) -> tuple[Any, ...]:
        return view(ctx, seen_mark)

    outputs = [status, progress, chart, guidance, samples, log, timer, seen]
    form = ctx.form_kwargs(preset=ctx.preset)
    names = list(form)
    start.click(form_handler(start_run, names), inputs_kwargs=form, outputs=[message, timer], api_name="start_run")
    stop.click(stop_run, outputs=message, api_name="stop_run")
    resume.click(form_handler(resume_run, names), inputs_kwargs=form, outputs=[message, timer],
                 api_name="resume_run")
    timer.tick(poll, inputs=seen, outputs=outputs, api_visibility="private")
    return Attach(lambda: view(ctx, None), outputs)


@dataclass
class Attach:
    """What main.py wires to demo.load: a reload draws the current run and restarts polling if it is active."""

    fn: Callable[[], tuple[Any, ...]]
    outputs: list[Any]


def _last_state(ctx: AppContext) -> str | None:
    """The saved state of the newest run that stopped (Stop saves one), else None."""
    for summary in ctx.supervisor.discover():
        if summary.status in ("queued", "cancelled"):
            continue
        return replay(summary.run_dir).state_path if summary.status == "stopped" else None
    return None
