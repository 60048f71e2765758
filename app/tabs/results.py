"""Results: each run's saved LoRAs, their self-check report, a before/after grid, copy to a WebUI's Lora folder.

The logic lives in app/results.py (torch-free); this module lays it out and turns every problem into a message.
The grid is a short blocking job in a child process: fine for a job of seconds, unlike a training run, which the
Train tab polls from its run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.compare import CompareRequest, default_prompt, run_compare
from app.results import (
    WEBUI_FOLDER_KEY,
    SaveInfo,
    copy_to_webui,
    format_report,
    load_ui_settings,
    lora_report,
    resolve_run,
    resolve_save,
    run_choices,
    run_saves,
    save_of,
    save_ui_setting,
    saves_table,
)
from app.tabs.context import AppContext
from app.tensorboard import shared_boards
from training.contract.errors import UserError

SAVE_HEADERS = ["File", "Kind", "Step", "Epochs done", "Size", "Self-check"]  # epochs: app.runs.SavePoint
DEFAULT_STRENGTHS = "0, 0.5, 1"


@dataclass
class ResultsRefresh:
    """What main.py wires to the tab's select (and demo.load): re-list the runs, keep the picked one."""

    fn: Callable[..., tuple[Any, ...]]
    inputs: list[Any]
    outputs: list[Any]


def build_results_tab(ctx: AppContext) -> ResultsRefresh:
    data_dir = ctx.settings.data_dir
    gr.Markdown("### Results\nThe LoRA files each run saved, what they contain, and how they change an image.")
    with gr.Row():
        run = gr.Dropdown(choices=_choices(ctx), value=None, label="Run", elem_id="results-run", scale=4,
                          allow_custom_value=True)  # API callers may name any run; resolve_run checks it
        refresh = gr.Button("Refresh", elem_id="results-refresh", scale=0)
    saves = gr.Dataframe(headers=SAVE_HEADERS, value=[], interactive=False, label="Saved LoRAs",
                         elem_id="results-saves")
    with gr.Row():
        save = gr.Dropdown(choices=[], value=None, label="LoRA file", elem_id="results-save", scale=2,
                           allow_custom_value=True)
        download = gr.File(label="Download", interactive=False, elem_id="results-download", scale=2)
    report = gr.Markdown("Pick a run.", elem_id="results-report")
    with gr.Row():
        board_btn = gr.Button("Open TensorBoard", elem_id="tensorboard-btn", scale=0)
        board_message = gr.Markdown(elem_id="tensorboard-message")
    with gr.Accordion("Before / after", open=True, elem_id="section-compare"):
        gr.Markdown("The run's base model renders one prompt with the same seed at each LoRA strength: "
                    "0 is the base model alone, 1 the LoRA as trained. Not while a training run is active.")
        with gr.Row():
            prompt = gr.Textbox("", label="Prompt", elem_id="compare-prompt", scale=4)
            seed = gr.Number(1234, label="Seed", precision=0, minimum=0, elem_id="compare-seed", scale=1)
            steps = gr.Number(20, label="Steps", precision=0, minimum=1, maximum=150, elem_id="compare-steps",
                              scale=1)
            strengths = gr.Textbox(DEFAULT_STRENGTHS, label="Strengths", elem_id="compare-strengths", scale=1)
        generate = gr.Button("Generate", variant="primary", elem_id="compare-btn")
        compare_message = gr.Markdown(elem_id="compare-message")
        grid = gr.Image(label="Before / after", type="filepath", interactive=False, format="png",
                        elem_id="compare-grid")
    with gr.Accordion("Copy to a WebUI", open=True, elem_id="section-copy"):
        with gr.Row():
            folder = gr.Textbox(load_ui_settings(data_dir).get(WEBUI_FOLDER_KEY, ""), label="WebUI Lora folder",
                                info="e.g. …/stable-diffusion-webui/models/Lora (remembered for next time)",
                                elem_id="webui-folder", scale=4)
            overwrite = gr.Checkbox(False, label="Overwrite", elem_id="copy-overwrite", scale=0)
            copy = gr.Button("Copy", elem_id="copy-btn", scale=0)
        copy_message = gr.Markdown(elem_id="copy-message")

    def show_run(run_value: str | None, prompt_text: str, prefilled: str | None = None) -> tuple[Any, ...]:
        """Saves table, file picker, download and report of one run (the final save picked). The compare prompt
        follows the run shown (its first sample prompt) until the user types their own: ``prefilled`` is the text
        this page last put there, so one run's prompt (the demo's, say) never stays behind for another run."""
        try:
            run_dir = resolve_run(data_dir, run_value)
        except UserError as err:
            return [], gr.Dropdown(choices=[], value=None), None, f"**No run:** {err}", gr.skip(), gr.skip()
        found = run_saves(run_dir)
        names = [s.path.name for s in reversed(found)]  # newest first; the final save is last in found
        picked = found[-1] if found else None
        text, path = _report(picked) if picked else ("This run has no saved LoRA yet.", None)
        typed = (prompt_text or "").strip() not in ("", (prefilled or "").strip())
        fill = gr.skip() if typed else default_prompt(run_dir)
        return (saves_table(found), gr.Dropdown(choices=names, value=names[0] if names else None), path, text, fill,
                gr.skip() if typed else fill)

    def results_runs(run_value: str | None = None, prompt_text: str = "", folder_text: str = "",
                     prefilled: str | None = None) -> tuple[Any, ...]:
        """Re-list the runs (newest first) and show the picked one, else the newest."""
        choices = _choices(ctx)
        values = [v for _, v in choices]
        picked = run_value if run_value in values else (values[0] if values else None)
        remembered = load_ui_settings(data_dir).get(WEBUI_FOLDER_KEY, "")
        folder_value = remembered if not (folder_text or "").strip() and remembered else gr.skip()
        return gr.Dropdown(choices=choices, value=picked), *show_run(picked, prompt_text, prefilled), folder_value

    def results_report(run_value: str | None, save_name: str | None) -> tuple[Any, str]:
        """The chosen save as a download, and its self-check report."""
        try:
            run_dir = resolve_run(data_dir, run_value)
            path = resolve_save(run_dir, save_name)
        except UserError as err:
            return None, f"**No report:** {err}"
        info = next((s for s in run_saves(run_dir) if s.path == path), None)
        text, path = _report(info) if info else (f"**No report:** {save_name} is gone", None)
        return path, text

    def compare(run_value: str | None, save_name: str | None, prompt_text: str, seed_value: float | None,
                steps_value: float | None, strengths_text: str) -> Iterator[tuple[Any, str]]:
        """Render the prompt at each LoRA strength with the run's base model; returns the grid PNG."""
        try:
            run_dir = resolve_run(data_dir, run_value)
            req = CompareRequest(run_dir, resolve_save(run_dir, save_name), prompt_text or "",
                                 _whole(seed_value, "seed"), _whole(steps_value, "steps"),
                                 strengths_text or DEFAULT_STRENGTHS)
            yield gr.skip(), f"Generating with `{req.lora.name}`: loading the base model, then one image per strength…"
            path = run_compare(req, ctx.supervisor)
        except (UserError, OSError) as err:
            yield None, f"**Not generated:** {err}"
            return
        yield str(path), f"Grid saved as `{path}`."

    def copy_save(run_value: str | None, save_name: str | None, folder_text: str, replace: bool) -> str:
        """Copy the chosen save and its preview image into the WebUI's Lora folder (remembered in ui-settings.json)."""
        try:
            run_dir = resolve_run(data_dir, run_value)
            src = resolve_save(run_dir, save_name)
            copied = copy_to_webui(run_dir, save_of(run_dir, src), folder_text, overwrite=bool(replace))
        except UserError as err:
            return f"**Not copied:** {err}"
        except OSError as err:
            return f"**Not copied:** {err.filename or folder_text}: {err.strerror or err}"
        try:
            save_ui_setting(data_dir, WEBUI_FOLDER_KEY, str(copied.lora.parent))
        except OSError as err:
            return f"{copied.text()} The folder could not be remembered: {err.strerror or err}."
        return f"{copied.text()} Refresh the WebUI's LoRA list to see it."

    def open_tensorboard(run_value: str | None) -> str:
        """A link to TensorBoard on the picked run's logs (started once per run, then reused)."""
        try:
            url = shared_boards().open(resolve_run(data_dir, run_value))
        except (UserError, OSError) as err:
            return f"**No TensorBoard:** {err}"
        return f"TensorBoard for this run: [{url}]({url}) (served on this computer only)"

    prefilled = gr.State("")  # the compare prompt as this page last filled it from a run
    view = [saves, save, download, report, prompt, prefilled]
    refresh.click(results_runs, inputs=[run, prompt, folder, prefilled], outputs=[run, *view, folder],
                  api_name="results_runs")
    run.input(show_run, inputs=[run, prompt, prefilled], outputs=view, api_visibility="private")
    save.input(results_report, inputs=[run, save], outputs=[download, report], api_name="results_report")
    generate.click(compare, inputs=[run, save, prompt, seed, steps, strengths], outputs=[grid, compare_message],
                   api_name="compare")
    board_btn.click(open_tensorboard, inputs=run, outputs=board_message, api_name="open_tensorboard")
    copy.click(copy_save, inputs=[run, save, folder, overwrite], outputs=copy_message, api_name="copy_lora")
    return ResultsRefresh(results_runs, [run, prompt, folder, prefilled], [run, *view, folder])


def _choices(ctx: AppContext) -> list[tuple[str, str]]:
    try:
        return run_choices(ctx.supervisor)
    except OSError:
        return []


def _report(info: SaveInfo) -> tuple[str, str | None]:
    """Markdown report and the path to offer for download (under the data dir, so Gradio may serve it)."""
    try:
        return format_report(lora_report(info.path, info.check, info.check_result), info), str(info.path)
    except UserError as err:
        return f"**Not a readable LoRA:** {err}", str(info.path)
    except OSError as err:
        return f"**Not readable:** {info.path.name}: {err.strerror or err}", None


def _whole(value: float | None, name: str) -> int:
    if value is None or float(value) != int(value):
        raise UserError(f"{name}: give a whole number")
    return int(value)

