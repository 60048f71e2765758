"""The queue view on the Train tab: every queued, running and recently finished run, one row each, with buttons
that act on that row's run only (Cancel a queued job, Stop the running run, Resume a stopped one, Load its settings).

The rows come from JobSupervisor.overview() through a gr.State the page's poll refreshes; @gr.render redraws them only
when a row changes (the running row shows no step count, so a run in progress does not redraw the buttons every
second under the user's pointer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.form import config_to_values
from app.runs import read_preset, replay, run_folder
from app.supervisor import QueueRow
from app.tabs.context import AppContext
from training.contract.config_io import ConfigError, load_config
from training.contract.errors import UserError
from training.contract.layout import JOB_FILE


def row_record(row: QueueRow) -> dict[str, Any]:
    """What a row draws, as a plain dict (a gr.State value the page compares to decide whether to redraw)."""
    text = "running" if row.status == "running" else row.text  # no step count: see the module docstring
    return {"run": str(row.run_dir), "label": row.label, "status": row.status, "text": text, "held": row.held,
            "resumable": row.resumable}


def queue_records(ctx: AppContext) -> list[dict[str, Any]]:
    return [row_record(row) for row in ctx.supervisor.overview()]


def run_settings(ctx: AppContext, value: str) -> tuple[dict[str, Any] | None, str]:
    """The form values of a run's job.toml (output_dir and resume cleared: a new run gets its own folder and starts
    fresh), or None and why not."""
    try:
        run_dir = run_folder(ctx.settings.data_dir, value)
        cfg, _notes = load_config(run_dir / JOB_FILE)
    except (UserError, ConfigError, OSError) as err:
        return None, f"**Settings not loaded:** {err}"
    values = config_to_values(cfg) | {"output_dir": "", "resume": ""}
    return values, (f"Loaded the settings of `{run_dir.parent.name} · {run_dir.name}` into the form "
                    f"(from its {JOB_FILE}; output folder and resume cleared).")


def resume_own_settings(ctx: AppContext, value: str) -> str:
    """Continue a stopped run from its saved state, with that run's own settings, in a new run folder."""
    try:
        run_dir = run_folder(ctx.settings.data_dir, value)
        state = replay(run_dir).state_path
        if not state:
            return "**Not resumed:** this run did not stop with a saved state (Stop saves one)."
        cfg, _notes = load_config(run_dir / JOB_FILE)
        handle = ctx.supervisor.start(cfg.model_copy(update={"resume": state}), read_preset(run_dir))
    except (UserError, ConfigError, OSError) as err:
        return f"**Not resumed:** {err}"
    if handle.status == "queued":
        return f"**queued** (position {handle.position}): resumes when the current run ends · `{handle.run_dir}`"
    return f"**started** · `{handle.run_dir}`"


def act(ctx: AppContext, action: str, value: str) -> str:
    """Cancel or Stop the run a row names, never whichever run happens to be active."""
    try:
        run_dir = run_folder(ctx.settings.data_dir, value)
    except UserError as err:
        return f"**Not done:** {err}"
    outcome = ctx.supervisor.stop(run_dir)
    name = f"`{run_dir.parent.name} · {run_dir.name}`"
    if outcome == "cancelled":
        return f"Cancelled the queued run {name}."
    if outcome == "stopping":
        return f"Stopping {name}: the trainer finishes its step, saves the LoRA and its state, then ends."
    return f"{name} is not running any more." if action == "stop" else f"{name} was no longer queued."


@dataclass
class QueueView:
    rows: Any  # gr.State: row_record() dicts
    start_held: Any  # gr.Button: Start queue (shown while jobs are held since a restart)


def build_queue_view(ctx: AppContext, message: Any, after: Callable[[Any], Any]) -> QueueView:
    """The view, under a heading. ``message`` shows what a button did; ``after(event)`` chains the caller's refresh
    of the other buttons onto each of this view's events."""
    rows = gr.State([])
    gr.Markdown("#### Queue and recent runs")
    with gr.Row():
        start_held = gr.Button("Start queue", elem_id="queue-start-held", visible=False, scale=0)
        clear = gr.Button("Cancel all queued", elem_id="queue-cancel-all", scale=0, size="sm")

    @gr.render(inputs=rows)
    def draw(records: list[dict[str, Any]]) -> None:
        if not records:
            gr.Markdown("No runs yet.", elem_id="queue-empty")
        for record in records:
            draw_row(record)

    def draw_row(record: dict[str, Any]) -> None:
        run = gr.State(record["run"])
        with gr.Row(elem_classes=["queue-row"], equal_height=True):
            gr.Markdown(f"**{record['label']}** · {record['text']}", elem_classes=["queue-row-text"])
            if record["status"] == "queued":
                button("Cancel", lambda value: act(ctx, "cancel", value), run)
            if record["status"] in ("starting", "running"):
                button("Stop", lambda value: act(ctx, "stop", value), run, variant="stop")
            if record["resumable"]:
                button("Resume", lambda value: resume_own_settings(ctx, value), run)
            load = gr.Button("Load settings", size="sm", scale=0, min_width=120)
            after(load.click(lambda value: load_into_form(value), inputs=run,
                             outputs=[*ctx.form_inputs, ctx.preset, message], api_visibility="private"))

    def button(label: str, fn: Callable[[str], str], run: Any, variant: str = "secondary") -> None:
        btn = gr.Button(label, size="sm", scale=0, min_width=90, variant=variant)
        after(btn.click(lambda value: (fn(value), queue_records(ctx)), inputs=run, outputs=[message, rows],
                        api_visibility="private"))

    def load_into_form(value: str) -> tuple[Any, ...]:
        values, text = run_settings(ctx, value)
        if values is None:
            return (*(gr.skip() for _ in ctx.specs), gr.skip(), text)
        return (*(values[s.name] for s in ctx.specs), read_preset(Path(value)), text)

    def release() -> tuple[str, list[dict[str, Any]]]:
        count = ctx.supervisor.release_held()
        return f"Started the queue: {count} run{'s' if count != 1 else ''} from before the restart.", queue_records(ctx)

    def cancel_all() -> tuple[str, list[dict[str, Any]]]:
        cancelled = [row for row in ctx.supervisor.overview() if row.status == "queued"]
        for row in cancelled:
            ctx.supervisor.stop(row.run_dir)
        return f"Cancelled {len(cancelled)} queued run{'s' if len(cancelled) != 1 else ''}.", queue_records(ctx)

    after(start_held.click(release, outputs=[message, rows], api_name="start_queue"))
    after(clear.click(cancel_all, outputs=[message, rows], api_name="cancel_queued"))
    return QueueView(rows, start_held)
