"""Dataset: pick, upload and check a training folder; edit captions. (Being built: see issue 3.)"""

from __future__ import annotations

import gradio as gr

from app.tabs.context import AppContext


def build_dataset_tab(ctx: AppContext) -> None:
    gr.Markdown(
        "### Dataset\n"
        "Coming next: browse a training folder, check image counts and repeats, and edit captions.\n\n"
        "For now, type the folder into **train_data_dir** on the *Model & preset* tab (Dataset section). "
        "Subfolders named like `10_name` repeat their images 10 times.",
        elem_id="dataset-placeholder")
