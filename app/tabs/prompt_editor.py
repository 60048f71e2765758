"""The sample-prompt editor under the ``sample_prompts`` field: one table row per sample image, with negative prompt,
size, steps, CFG scale and seed, kept in step with the field in kohya's line syntax (the logic: app/prompt_rows.py).

The field stays the one source of truth (Save TOML, presets and Start read it): editing a row rewrites the field, and
a change of the field (typed, loaded from a TOML file, set by a preset or the demo) redraws the table.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.prompt_rows import COLUMNS, HEADERS, rows_from_setting, rows_to_lines, setting_from_rows
from app.tabs.context import AppContext
from training.contract.errors import UserError

EMPTY_ROW = [""] * len(COLUMNS)
HELP = ("One row per sample image. An empty cell keeps the trainer's default (the training resolution, 28 steps, "
        "CFG 7, seed 1234 plus the row's position). Add a row at the table's bottom edge; clear a row's cells to drop "
        "it. The field above holds the same prompts in kohya's syntax (`--n --w --h --s --l --d`).")


def build_prompt_editor(ctx: AppContext, field: Any) -> None:
    """Lay out the editor where it is called (right after the field renders) and keep it and the field in step."""
    data_dir = ctx.settings.data_dir
    with gr.Accordion("Sample prompt editor", open=False, elem_id="prompt-editor"):
        gr.Markdown(HELP)
        table = gr.Dataframe([EMPTY_ROW], headers=HEADERS, datatype="str", column_count=len(COLUMNS),
                             interactive=True, type="array", elem_id="prompt-table",
                             label="Sample prompts")
        message = gr.Markdown(elem_id="prompt-editor-message")

    def table_for_field(value: str | None, shown: list[list[Any]] | None) -> tuple[Any, str]:
        """The field's prompts as rows; the table is left alone when it already says the same (the user's edit)."""
        try:
            rows = rows_from_setting(value)
        except UserError as err:
            return gr.skip(), f"**Prompts not shown:** {err}"
        if _same_prompts(rows, shown or []):
            return gr.skip(), ""
        return rows or [EMPTY_ROW], ""

    def field_for_table(rows: list[list[Any]] | None) -> tuple[Any, str]:
        try:
            return setting_from_rows(rows or [], data_dir), ""
        except UserError as err:
            return gr.skip(), f"**Not applied:** {err}"
        except OSError as err:
            return gr.skip(), f"**Not applied:** cannot write the prompt file: {err.strerror or err}"

    field.change(table_for_field, inputs=[field, table], outputs=[table, message], api_visibility="private")
    table.input(field_for_table, inputs=table, outputs=[field, message], api_visibility="private")


def _same_prompts(rows: list[list[Any]], shown: list[list[Any]]) -> bool:
    try:
        return rows_to_lines(rows) == rows_to_lines(shown)
    except UserError:  # the table holds a cell being fixed: the field's rows replace it only if they differ
        return False
