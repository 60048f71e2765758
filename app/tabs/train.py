"""Train: Start / Queue another run / Stop / Resume, Sample now / Save now, Try the demo, the queue view
(app/tabs/queue.py), and the live view of a run, polled from its folder with gr.Timer.

Every button is enabled only when it applies (control_states in train_view.py): Start while nothing runs or waits
and the form is valid, so a second press cannot queue a duplicate; Stop, Sample now and Save now while the shown run
runs, and they act on the shown run; Resume for a shown run stopped with a state.

No generator streams the run (it would hold a queue worker for hours and belong to one browser session): the
trainer is a child process, the Timer re-reads its events, and a page reload or a second tab re-attaches through
demo.load. The run picker shows any earlier run the same way.
Handlers return messages, never tracebacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app import demo_setup
from app.compare import compare_active
from app.form import first_problem, values_to_config
from app.guidance import diagnose
from app.model_check import family_problem
from app.plots import loss_figure
from app.runs import RUNS_DIR, eta_text, log_tail, read_preset
from app.supervisor import RunSnapshot
from app.tabs.context import AppContext, RunRecord, form_handler
from app.tabs.queue import build_queue_view, queue_records, run_settings
from app.tabs.train_view import (
    CONTROL_NAMES,
    FOLLOW,
    FOLLOW_LABEL,
    GalleryCache,
    control_states,
    has_sample_prompts,
    picked_run,
    progress_bar,
    run_choices,
)
from training.contract.config import TrainConfig
from training.contract.errors import UserError

POLL_SECONDS = 1.0  # the page's poll while a run is going or queued
IDLE_POLL_SECONDS = 5.0  # and while nothing is: only to notice a run started elsewhere (another tab, the API)
STATUS_ELEM = "run-status"
IDLE_TEXT = "No run yet. Fill the form (or pick a preset) and press Start, or press **Try the demo**."
DEMO_INFO = ("**Try the demo** trains a tiny random-weight model on a small bundled dataset: 15–30 s on an idle "
             "2-core CPU (the first press also builds the model), several minutes when other programs keep the CPU "
             "busy. A check that training works on this computer, not a useful LoRA.")


def check_paths(ctx: AppContext, cfg: TrainConfig) -> str | None:
    """The checks the trainer makes first (model and dataset paths, sample prompts, ...), so a mistake shows now,
    not as a failed run. A dry run loads no model or dataset, so it gets the dry run's own, smaller check."""
    # Imported here: the dry run's checks and the dataset scan are only needed on Start.
    from training.contract.services import dry_run_preflight, preflight

    check = dry_run_preflight if ctx.settings.dry_run else preflight
    try:
        check(cfg.model_copy(update={"output_dir": str(ctx.settings.data_dir / RUNS_DIR)}))
    except UserError as err:
        return str(err)
    return None


BUSY_TEXT = ("**Not started:** a run is already going; press **Queue another run** to run these settings after "
             "it.")


def start_job(ctx: AppContext, values: dict[str, Any], preset: dict[str, Any] | None = None,
              only_when_idle: bool = False) -> str:
    """Validate the form and start (or queue) the run. Returns the status line to show. ``only_when_idle``: refuse
    instead of queueing while a run is going (Start; a second press must not queue a duplicate)."""
    cfg, error = values_to_config(values)
    if cfg is None:
        return f"**Not started:** {error}"
    error = first_problem(values) or check_paths(ctx, cfg) or (None if ctx.settings.dry_run else
                                      family_problem(cfg.pretrained_model_name_or_path or "", preset))
    if error:
        return f"**Not started:** {error}"
    if only_when_idle and ctx.supervisor.busy():
        return BUSY_TEXT
    if compare_active():  # one GPU job at a time: the grid would share the GPU's memory with the run
        return "**Not started:** a before/after grid is being made (Results tab); press Start again when it is done"
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
        parts.append(eta_text(s.eta))
    if s.images_per_s:
        parts.append(f"{s.images_per_s:.2f} images/s")
    if s.last_save is not None:
        parts.append(f"last save: {s.last_save.text()}")
    return " · ".join(parts)


def guidance_text(record: RunRecord, snap: RunSnapshot) -> str:
    error = record.error or ({"msg": snap.error or "the run failed"} if snap.status == "failed" else None)
    d = diagnose(record.steps, record.vals, record.band, snap.total_steps, error)
    best = f" Best save by validation: step {d.best_step}." if d.best_step is not None else ""
    headline = d.headline
    if d.state == "learning" and snap.status in ("done", "stopped"):  # its headline says "Training is running"
        loss = f"; final smoothed loss {snap.smoothed:.4g}" if isinstance(snap.smoothed, float) else ""
        headline = f"The run is {snap.status}{loss}."
    return f"**{headline}** {d.advice}{best}"


def poll_run(ctx: AppContext, run_dir: Path | None = None) -> tuple[RunSnapshot, RunRecord]:
    """Poll a run (default: the active, else the newest) and fold its new events into the shared history. Every
    poll goes through here: the supervisor hands each event out once, and one it handed to nobody is lost."""
    snap = ctx.supervisor.poll(run_dir)
    return snap, ctx.history.feed(snap)


class RunView:
    """The live view's outputs for one session: what to redraw is decided against ``seen``, the mark of what this
    session last drew (run, history version, sample count, status), so each tab redraws its own picture."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.galleries = GalleryCache()
        self._demo_runs: dict[Path, bool] = {}

    def is_demo(self, run_dir: Path) -> bool:
        if run_dir not in self._demo_runs:
            self._demo_runs[run_dir] = demo_setup.is_demo_run(run_dir, self.ctx.settings)
        return self._demo_runs[run_dir]

    def __call__(self, seen: dict[str, Any] | None, picked: str | None = FOLLOW) -> tuple[Any, ...]:
        """status, progress text, progress bar, chart, guidance, samples, log, timer, seen, run picker."""
        try:
            run_dir = picked_run(self.ctx.settings, picked)
        except UserError as err:
            return (f"**Not shown:** {err}", *(gr.skip() for _ in range(9)))
        follow, follow_record = poll_run(self.ctx)  # also when showing another run: feeds history, starts the queue
        picked_other = run_dir is not None and run_dir != follow.run_dir
        snap, record = poll_run(self.ctx, run_dir) if picked_other else (follow, follow_record)
        timer = gr.Timer(POLL_SECONDS if follow.active or snap.active else IDLE_POLL_SECONDS, active=True)
        if snap.status == "idle":
            return IDLE_TEXT, "", "", gr.skip(), "", gr.skip(), "", timer, seen, gr.skip()
        mark = {"run": str(snap.run_dir), "version": record.version, "samples": len(snap.sample_paths),
                "status": snap.status}
        old = seen if seen and seen.get("run") == mark["run"] else {}
        failure = (snap.error or "the run failed") if snap.status == "failed" else None
        chart = (loss_figure(record.steps, record.vals, record.band, failure=failure)
                 if old.get("version") != mark["version"] else gr.skip())
        gallery = (self.galleries.get(snap.run_dir, mark["samples"]) if old.get("samples") != mark["samples"]
                   else gr.skip())
        picker = gr.update(choices=run_choices(self.ctx.supervisor)) if old.get("status") != snap.status else gr.skip()
        return (self.status_text(snap), progress_text(snap), progress_bar(snap), chart, guidance_text(record, snap),
                gallery, log_tail(snap.run_dir), timer, mark, picker)

    def status_text(self, snap: RunSnapshot) -> str:
        detail = snap.status_text.removeprefix(snap.status).removeprefix(":").strip()  # "done: x" -> "x"
        text = f"**{snap.status}** · {detail}" if detail else f"**{snap.status}**"
        return f"{text}\n\n_{demo_setup.DEMO_LABEL}._" if self.is_demo(snap.run_dir) else text


def request_now(ctx: AppContext, flag: str, picked: str | None = FOLLOW) -> str:
    """Sample now / Save now on the shown run: a control flag the trainer acts on after its current step."""
    try:
        snap, _ = poll_run(ctx, picked_run(ctx.settings, picked))
    except UserError as err:
        return f"**Not requested:** {err}"
    if snap.status == "queued":
        return "Nothing is running yet: the queued run has not started."
    if not snap.running:
        return "Nothing is running."
    if flag == "sample" and not has_sample_prompts(snap.run_dir):
        return "**Not requested:** this run has no sample_prompts, so it cannot make samples."
    if not ctx.supervisor.request(snap.run_dir, flag):
        return "Nothing is running."
    if flag == "sample":
        return "Samples requested: they are made after the current step and appear under Samples."
    return "Save requested: the LoRA and its training state are saved after the current step."


def stop_shown(ctx: AppContext, picked: str | None = FOLLOW) -> str:
    """Stop the shown run (a queued one is cancelled), never another run that happens to be active."""
    try:
        snap, _ = poll_run(ctx, picked_run(ctx.settings, picked))
    except UserError as err:
        return f"**Not stopped:** {err}"
    if not snap.active:
        queued = len(ctx.supervisor.queue_order())
        return f"Nothing is running; {queued} queued (see the queue below)." if queued else "Nothing is running."
    outcome = ctx.supervisor.stop(snap.run_dir)
    if outcome == "stopping":
        return "Stopping: the trainer finishes its step, saves the LoRA and its state, then ends."
    return f"{outcome}: `{snap.run_dir}`"


def shown_state(ctx: AppContext, picked: str | None) -> tuple[str | None, str | None]:
    """(the saved state of the shown run, or None; why not)."""
    try:
        snap, _ = poll_run(ctx, picked_run(ctx.settings, picked))
    except UserError as err:
        return None, str(err)
    if snap.status != "stopped" or not snap.state.state_path:
        return None, "the shown run did not stop with a saved state (Stop saves one)"
    return snap.state.state_path, None


def try_demo(ctx: AppContext) -> tuple[str, bool]:
    """Prepare the demo in a child process, then start it with the demo's own settings: the user's form is left as
    it was. Returns (message, started)."""
    try:
        values = demo_setup.demo_values(demo_setup.prepare(ctx.settings))
    except UserError as err:
        return f"**Demo not started:** {err}", False
    text = start_job(ctx, dict(values), None)
    label = f"**{demo_setup.DEMO_LABEL}.**"
    if text.startswith("**Not"):
        return f"{label}\n\n{text}", False
    return (f"{label}\n\n{text} · watch the loss, samples and saves below; the LoRA it makes is no use. "
            "Your form was left as it was."), True


def build_train_tab(ctx: AppContext) -> Attach:
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="start-btn", scale=0)
        queue_btn = gr.Button("Queue another run", elem_id="queue-btn", scale=0, interactive=False)
        stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=0, interactive=False)
        resume = gr.Button("Resume", elem_id="resume-btn", scale=0, interactive=False)
    with gr.Row():
        sample_now = gr.Button("Sample now", elem_id="sample-now-btn", scale=0, interactive=False)
        save_now = gr.Button("Save now", elem_id="save-now-btn", scale=0, interactive=False)
        demo_btn = gr.Button("Try the demo", elem_id="demo-btn", scale=0)
        gr.Markdown(DEMO_INFO, elem_id="demo-info")
    message = gr.Markdown(elem_id="start-message")
    with gr.Row():
        picker = gr.Dropdown(choices=[(FOLLOW_LABEL, FOLLOW)], value=FOLLOW, label="Run", elem_id="run-picker",
                             allow_custom_value=True,  # the list is per page; the handler checks the folder itself
                             info="Which run to show: the active or newest one, or any earlier run of this data "
                                  "folder.", scale=4)
        load_settings = gr.Button("Load this run's settings", elem_id="load-run-settings", scale=1)
    status = gr.Markdown(IDLE_TEXT, elem_id=STATUS_ELEM)
    bar = gr.HTML(elem_id="run-progress-bar")
    progress = gr.Markdown(elem_id="run-progress")
    pending: list[Any] = []  # events after which the buttons and the queue view are refreshed (wired at the end)

    def refresh_controls(event: Any) -> Any:
        pending.append(event)
        return event

    with gr.Group(elem_classes=["queue-view"]):
        queue = build_queue_view(ctx, message, refresh_controls)
    chart = gr.Plot(label="Loss", elem_id="loss-chart")
    guidance = gr.Markdown(elem_id="guidance")
    samples = gr.Gallery(label="Samples (newest step first)", interactive=False, columns=6, height=280,
                         object_fit="contain", elem_id="samples")
    log = gr.Textbox(label="Trainer log (last lines)", lines=8, max_lines=15, interactive=False, elem_id="log-tail")
    timer = gr.Timer(IDLE_POLL_SECONDS, active=True)
    seen = gr.State(None)
    view = RunView(ctx)
    controls_out = [queue.rows, start, queue_btn, stop, resume, sample_now, save_now, queue.start_held]

    def show_controls(picked: str | None, errors: dict[str, str] | None) -> tuple[Any, ...]:
        """The queue view's rows and which buttons may be pressed now, for the shown run and the form."""
        try:
            shown, _ = poll_run(ctx, picked_run(ctx.settings, picked))
        except UserError:
            shown, _ = poll_run(ctx)
        on = control_states(shown, ctx.supervisor.busy(), not errors)
        held = bool(ctx.supervisor.held())
        return (queue_records(ctx), *(gr.Button(interactive=on[name]) for name in CONTROL_NAMES),
                gr.Button(visible=held))

    def following() -> Any:
        return gr.update(value=FOLLOW, choices=run_choices(ctx.supervisor))

    def start_run(values: dict[str, Any]) -> tuple[str, Any, Any]:
        """Start a training run with these settings. Refused while a run is going (a second press of Start must
        not queue a duplicate): Queue another run is the deliberate way to queue."""
        return queue_run(values, only_when_idle=True)

    def queue_run(values: dict[str, Any], only_when_idle: bool = False) -> tuple[str, Any, Any]:
        """Start a training run with these settings (unset ones: the form's values), or queue it behind the active
        run."""
        values.pop("picked", None)
        preset = values.pop("preset", None)
        text = start_job(ctx, values, preset, only_when_idle)
        if text.startswith("**Not"):
            return text, gr.skip(), gr.skip()
        return text, gr.Timer(POLL_SECONDS, active=True), following()

    def stop_run(picked: str | None = FOLLOW) -> str:
        """Stop the shown run: it finishes its step, saves the LoRA and its state, then ends."""
        return stop_shown(ctx, picked)

    def resume_run(values: dict[str, Any]) -> tuple[str, Any, Any]:
        """Continue the shown stopped run from its saved state, with the form's settings, in a new run folder."""
        state_path, why = shown_state(ctx, values.pop("picked", None))
        if state_path is None:
            return f"**Not resumed:** {why}.", gr.skip(), gr.skip()
        return queue_run({**values, "resume": state_path})

    def sample_run(picked: str | None = FOLLOW) -> str:
        """Ask the shown running trainer for sample images after its current step."""
        return request_now(ctx, "sample", picked)

    def save_run(picked: str | None = FOLLOW) -> str:
        """Ask the shown running trainer to save the LoRA (and its state) after its current step."""
        return request_now(ctx, "save", picked)

    def demo_run() -> tuple[Any, ...]:
        """Try the demo: a tiny random model and a sample dataset, trained in seconds to minutes (a pipeline check).
        It runs with the demo's own settings; the form keeps the user's."""
        text, started = try_demo(ctx)
        if not started:
            return text, gr.skip(), gr.skip()
        return text, gr.Timer(POLL_SECONDS, active=True), following()

    def load_shown(picked: str | None) -> tuple[Any, ...]:
        """Fill the form from the shown run's job.toml."""
        try:
            run_dir = picked_run(ctx.settings, picked) or poll_run(ctx)[0].run_dir
        except UserError as err:
            return (*(gr.skip() for _ in ctx.specs), gr.skip(), f"**Settings not loaded:** {err}")
        values, text = run_settings(ctx, str(run_dir))
        if values is None:
            return (*(gr.skip() for _ in ctx.specs), gr.skip(), text)
        return (*(values[s.name] for s in ctx.specs), read_preset(run_dir), text)

    def show_run(seen_mark: dict[str, Any] | None, picked: str | None) -> tuple[Any, ...]:
        """Show one run: status, progress, loss chart, guidance, samples and log (the run folder, or "follow")."""
        return view(seen_mark, picked)

    outputs = [status, progress, bar, chart, guidance, samples, log, timer, seen, picker]
    form = ctx.form_kwargs(preset=ctx.preset)
    names = list(form)
    picked_form = ctx.form_kwargs(preset=ctx.preset, picked=picker)
    refresh_controls(start.click(form_handler(start_run, names), inputs_kwargs=form,
                                 outputs=[message, timer, picker], api_name="start_run", trigger_mode="once"))
    refresh_controls(queue_btn.click(form_handler(queue_run, names), inputs_kwargs=form,
                                     outputs=[message, timer, picker], api_name="queue_run", trigger_mode="once"))
    refresh_controls(stop.click(stop_run, inputs=picker, outputs=message, api_name="stop_run"))
    refresh_controls(resume.click(form_handler(resume_run, list(picked_form)), inputs_kwargs=picked_form,
                                  outputs=[message, timer, picker], api_name="resume_run", trigger_mode="once"))
    sample_now.click(sample_run, inputs=picker, outputs=message, api_name="sample_now")
    save_now.click(save_run, inputs=picker, outputs=message, api_name="save_now")
    refresh_controls(demo_btn.click(demo_run, outputs=[message, timer, picker], api_name="try_demo",
                                    show_progress_on=[message], trigger_mode="once"))
    load_settings.click(load_shown, inputs=picker, outputs=[*ctx.form_inputs, ctx.preset, message],
                        api_name="load_run_settings")
    refresh_controls(picker.input(show_run, inputs=[seen, picker], outputs=outputs, api_name="show_run"))
    picker.focus(lambda: gr.update(choices=run_choices(ctx.supervisor)), outputs=picker, api_visibility="private")
    refresh_controls(timer.tick(show_run, inputs=[seen, picker], outputs=outputs, api_visibility="private"))
    ctx.form_errors.change(show_controls, inputs=[picker, ctx.form_errors], outputs=controls_out,
                           api_visibility="private")
    for event in pending:
        event.then(show_controls, inputs=[picker, ctx.form_errors], outputs=controls_out, api_visibility="private")
    return Attach(lambda: view(None, FOLLOW), outputs, show_controls, [picker, ctx.form_errors], controls_out)


@dataclass
class Attach:
    """What main.py wires to demo.load: a reload draws the current run and its controls, and polls on."""

    fn: Callable[[], tuple[Any, ...]]
    outputs: list[Any]
    controls: Callable[..., tuple[Any, ...]]
    controls_inputs: list[Any]
    controls_outputs: list[Any]
