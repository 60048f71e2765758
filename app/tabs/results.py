"""Results: each run's saved LoRAs, their self-check, a before/after grid, copy to a WebUI folder. (Being built.)"""

from __future__ import annotations

import gradio as gr

from app.tabs.context import AppContext


def build_results_tab(ctx: AppContext) -> None:
    gr.Markdown(
        "### Results\n"
        "Coming next: the list of finished runs with their LoRA files, samples and loss curves.\n\n"
        "For now, each run's files are in its folder under `runs/` in the data folder; the *Train* tab shows "
        "the newest run.",
        elem_id="results-placeholder")
