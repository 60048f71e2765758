"""The Tools tab: merge LoRAs into a checkpoint, merge LoRAs, resize, extract and inspect, each with only its own
settings. The work runs in app.tools_job's child process (``python -m training.tools``); a gr.Timer polls it only
while a job runs and shows its progress, its printed report, a one-line error, and the file written for download."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.tabs.context import AppContext
from app.tools_job import (
    DYNAMIC_METHODS,
    OPERATIONS,
    PRECISIONS,
    ToolFolders,
    ToolJobs,
    ToolRequest,
    ToolStatus,
    lora_choices,
    model_choices,
)
from training.contract.errors import UserError
from training.contract.services import md_escape

POLL_S = 1.0
LORA_ROWS = 4  # merge and merge-loras take up to this many LoRAs
KEEP = "keep"  # the precision entry that keeps each tensor's dtype
FIXED = "fixed rank"  # the dynamic-method entry for a fixed rank
HINT = ("Pick files from your data folder and the folders given with `--models-dir` / `--loras-dir`; what a tool "
        "writes goes to `{tools}`. A run or a second tool job at the same time is refused (they would share the "
        "GPU and memory).")

# Which settings each operation shows.
SHOWN = {
    "model": {"merge"},
    "base": {"extract"},
    "tuned": {"extract"},
    "more_loras": {"merge", "merge-loras"},
    "first_lora": {"merge", "merge-loras", "resize", "inspect"},
    "strength": {"merge", "merge-loras"},
    "part_strengths": {"merge"},
    "precision": {"merge"},
    "rank": {"merge-loras", "resize", "extract"},
    "dynamic": {"resize"},
    "conv_rank": {"resize", "extract"},
    "clamp": {"extract"},
    "output": {"merge", "merge-loras", "resize", "extract"},
}
RANK_LABELS = {"merge-loras": "Rank (empty: exact, the ranks add up)", "resize": "Rank (with a dynamic method: the "
               "largest allowed)", "extract": "Rank"}


@dataclass
class ToolsUi:
    operation: Any
    model: Any
    base: Any
    tuned: Any
    lora_rows: list[Any]
    loras: list[Any]
    strengths: list[Any]
    part_row: Any
    unet_strength: Any
    te_strength: Any
    precision: Any
    rank: Any
    dynamic_method: Any
    dynamic_value: Any
    conv_rank: Any
    clamp: Any
    output_row: Any
    output_name: Any
    overwrite: Any
    run: Any
    stop: Any
    progress: Any
    report: Any
    result: Any
    download: Any
    timer: Any

    @property
    def settings(self) -> list[Any]:
        return [self.operation, self.model, self.base, self.tuned, *self.loras, *self.strengths, self.unet_strength,
                self.te_strength, self.precision, self.rank, self.dynamic_method, self.dynamic_value, self.conv_rank,
                self.clamp, self.output_name, self.overwrite]

    @property
    def pickers(self) -> list[Any]:
        return [self.model, self.base, self.tuned, *self.loras]

    @property
    def shown_by_operation(self) -> list[tuple[str, Any]]:
        return [("model", self.model), ("base", self.base), ("tuned", self.tuned), ("first_lora", self.lora_rows[0]),
                *(("more_loras", row) for row in self.lora_rows[1:]), *(("strength", s) for s in self.strengths),
                ("part_strengths", self.part_row), ("precision", self.precision), ("rank", self.rank),
                ("dynamic", self.dynamic_method), ("dynamic", self.dynamic_value), ("conv_rank", self.conv_rank),
                ("clamp", self.clamp), ("output", self.output_row)]


def build_tools_tab(ctx: AppContext, tab: Any) -> ToolJobs:
    """Render the tab and wire it; ``tab`` is its gr.Tab, whose selection re-lists the files."""
    folders = ToolFolders.of(ctx.settings)
    jobs = ToolJobs(folders, ctx.supervisor.busy, python=ctx.supervisor.python)
    ui = _layout(folders)
    _wire(ui, jobs, folders, tab)
    return jobs


def _picker(label: str, elem_id: str, choices: list[tuple[str, str]], visible: bool = True) -> Any:
    return gr.Dropdown(choices, value=None, label=label, allow_custom_value=True, filterable=True, visible=visible,
                       elem_id=elem_id, info="from the list, or type a path inside those folders")


def _layout(folders: ToolFolders) -> ToolsUi:
    loras, models = lora_choices(folders), model_choices(folders)
    gr.Markdown(HINT.format(tools=folders.tools_dir))
    operation = gr.Radio([(label, key) for key, label in OPERATIONS.items()], value="resize", label="Operation",
                         elem_id="tools-operation")
    with gr.Row():
        model = _picker("Checkpoint (.safetensors, .ckpt or diffusers folder)", "tools-model", models, visible=False)
        base = _picker("Base checkpoint", "tools-base", models, visible=False)
        tuned = _picker("Fine-tuned checkpoint", "tools-tuned", models, visible=False)
    rows, lora_pickers, strengths = [], [], []
    for i in range(LORA_ROWS):
        with gr.Row(visible=i == 0) as row:
            lora_pickers.append(_picker(f"LoRA {i + 1}" if i else "LoRA", f"tools-lora-{i}", loras))
            strengths.append(gr.Number(1.0, label="Strength", visible=False, elem_id=f"tools-strength-{i}",
                                       scale=0, min_width=120))
        rows.append(row)
    with gr.Row(visible=False) as part_row:
        unet_strength = gr.Number(1.0, label="UNet strength (times each LoRA's)", elem_id="tools-unet-strength")
        te_strength = gr.Number(1.0, label="Text-encoder strength (times each LoRA's)", elem_id="tools-te-strength")
        precision = gr.Dropdown([KEEP, *PRECISIONS], value=KEEP, label="Precision", elem_id="tools-precision",
                                info="keep: each tensor's own dtype")
    with gr.Row():
        # Text boxes, not numbers: an empty box means unset (a gr.Number sends 0).
        rank = gr.Textbox(label=RANK_LABELS["resize"], max_lines=1, elem_id="tools-rank")
        dynamic_method = gr.Dropdown([FIXED, *DYNAMIC_METHODS], value=FIXED, label="Dynamic rank (kohya's rules)",
                                     elem_id="tools-dynamic-method")
        dynamic_value = gr.Textbox(label="Dynamic value (sv_ratio > 1; sv_fro, sv_cumulative in (0, 1])",
                                   max_lines=1, elem_id="tools-dynamic-value")
        conv_rank = gr.Textbox(label="Conv rank (3x3 convs; empty: the rank)", max_lines=1, elem_id="tools-conv-rank")
        clamp = gr.Number(0.99, label="Clamp quantile (1: no clamp)", visible=False, elem_id="tools-clamp")
    with gr.Row() as output_row:
        output_name = gr.Textbox(label=f"Output name (written to {folders.tools_dir}/NAME/)", max_lines=1,
                                 placeholder="empty: named after the input", elem_id="tools-output-name")
        overwrite = gr.Checkbox(False, label="Overwrite an output of that name", elem_id="tools-overwrite")
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id="tools-run")
        stop = gr.Button("Stop", variant="stop", elem_id="tools-stop")
    progress = gr.HTML("", elem_id="tools-progress")
    report = gr.Textbox(label="Report", lines=12, max_lines=40, interactive=False, elem_id="tools-report")
    result = gr.Markdown(elem_id="tools-result")
    download = gr.File(label="Download", interactive=False, visible=False, elem_id="tools-download")
    timer = gr.Timer(POLL_S, active=False)
    return ToolsUi(operation, model, base, tuned, rows, lora_pickers, strengths, part_row, unet_strength, te_strength,
                   precision, rank, dynamic_method, dynamic_value, conv_rank, clamp, output_row, output_name,
                   overwrite, run, stop, progress, report, result, download, timer)


def _request(operation: str, model: str | None, base: str | None, tuned: str | None, *rest: Any) -> ToolRequest:
    loras, strengths = rest[:LORA_ROWS], rest[LORA_ROWS:2 * LORA_ROWS]
    (unet_strength, te_strength, precision, rank, dynamic_method, dynamic_value, conv_rank, clamp, output_name,
     overwrite) = rest[2 * LORA_ROWS:]
    used = LORA_ROWS if operation in SHOWN["more_loras"] else 1
    return ToolRequest(
        operation, tuple((loras[i] or "", _number(strengths[i], 1.0)) for i in range(used)), model or "",
        base or "", tuned or "", _number(unet_strength, 1.0), _number(te_strength, 1.0),
        "" if precision in (None, KEEP) else precision, _optional(rank, "rank"),
        "" if dynamic_method in (None, FIXED) else dynamic_method, _optional(dynamic_value, "dynamic value"),
        _optional(conv_rank, "conv rank"),
        _number(clamp, 0.99), output_name or "", bool(overwrite))


def _number(value: Any, default: float) -> float:
    return default if value is None or value == "" else float(value)


def _optional(text: str | None, what: str) -> float | None:
    """An optional number typed in a text box: None when empty, one line when not a number."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a number") from None


def progress_html(status: ToolStatus) -> str:
    """A bar while a job counts its modules, and the job's one line ("resize: 120 of 264 modules")."""
    if not status.job_id:
        return ""
    bar = (f'<progress value="{status.done}" max="{status.total}" style="width:100%"></progress>'
           if status.total and (status.running or status.done) else "")
    kind = "error" if status.error else "line"
    prefix = "Not done: " if status.error else ""
    return f'{bar}<div class="tools-{kind}">{html.escape(prefix + status.line)}</div>'


def _result(folders: ToolFolders, status: ToolStatus) -> tuple[str, Any]:
    """The output's path, and a download for a file written under <data>/tools (a folder has none)."""
    if not status.output:
        return "", gr.update(value=None, visible=False)
    out = Path(status.output)
    text = f"**Written:** `{md_escape(str(out))}`"
    if out.is_file() and out.resolve().is_relative_to(folders.tools_dir.resolve()):
        return text, gr.update(value=str(out), visible=True)
    return text + " (a folder: copy it from there)", gr.update(value=None, visible=False)


def _wire(ui: ToolsUi, jobs: ToolJobs, folders: ToolFolders, tab: Any) -> None:
    def show_operation(operation: str) -> tuple[Any, ...]:
        updates = [gr.update(visible=operation in SHOWN[key]) for key, _ in ui.shown_by_operation]
        rank_label = gr.update(visible=operation in SHOWN["rank"], label=RANK_LABELS.get(operation, "Rank"))
        ranks = [i for i, (key, _) in enumerate(ui.shown_by_operation) if key == "rank"]
        updates[ranks[0]] = rank_label
        return tuple(updates)

    def refresh(*chosen: str) -> tuple[Any, ...]:
        """The lists again (a run may have saved a LoRA, a job written a file); each picker keeps its value."""
        loras, models = lora_choices(folders), model_choices(folders)
        lists = [models] * 3 + [loras] * LORA_ROWS
        return tuple(gr.update(choices=items, value=value) for items, value in zip(lists, chosen, strict=True))

    def run_tool(*settings: Any) -> tuple[Any, ...]:
        """Run the chosen operation in the background."""
        try:
            status = jobs.start(_request(*settings))
        except UserError as err:
            # The timer is left as it is: a refusal while a job runs must not stop that job's progress.
            line = f'<div class="tools-error">Not started: {html.escape(str(err))}</div>'
            return line, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (progress_html(status), "", "", gr.update(value=None, visible=False), gr.Timer(active=True))

    def tick(*chosen: str) -> tuple[Any, ...]:
        status = jobs.poll()
        report = "\n".join(status.lines)
        if status.running:
            return progress_html(status), report, gr.skip(), gr.skip(), gr.skip(), *(gr.skip() for _ in chosen)
        text, download = _result(folders, status)
        return progress_html(status), report, text, download, gr.Timer(active=False), *refresh(*chosen)

    def attach() -> tuple[Any, ...]:
        """A reloaded page (or another tab) follows a job that is still running."""
        status = jobs.poll()
        if not status.running:
            return gr.skip(), gr.skip()
        return progress_html(status), gr.Timer(active=True)

    ui.operation.change(show_operation, inputs=ui.operation, outputs=[c for _, c in ui.shown_by_operation],
                        api_visibility="private", show_progress="hidden")
    ui.run.click(run_tool, inputs=ui.settings, outputs=[ui.progress, ui.report, ui.result, ui.download, ui.timer],
                 api_visibility="private")
    ui.stop.click(lambda: html.escape(jobs.stop()), outputs=ui.progress, api_visibility="private")
    ui.timer.tick(tick, inputs=ui.pickers,
                  outputs=[ui.progress, ui.report, ui.result, ui.download, ui.timer, *ui.pickers],
                  api_visibility="private", show_progress="hidden")
    tab.select(refresh, inputs=ui.pickers, outputs=ui.pickers, api_visibility="private", show_progress="hidden")
    tab.select(attach, outputs=[ui.progress, ui.timer], api_visibility="private", show_progress="hidden")
