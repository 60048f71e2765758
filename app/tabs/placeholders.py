"""Tabs whose features come in a later change. They say so plainly instead of offering controls that do nothing."""

from __future__ import annotations

import gradio as gr


def build_dataset_tab() -> None:
    gr.Markdown(
        "### Dataset\n"
        "Coming next: browse a training folder, check image counts and repeats, and edit captions.\n\n"
        "For now, type the folder into **train_data_dir** on the *Model & preset* tab (Dataset section). "
        "Subfolders named like `10_name` repeat their images 10 times.",
        elem_id="dataset-placeholder")


def build_results_tab() -> None:
    gr.Markdown(
        "### Results\n"
        "Coming next: the list of finished runs with their LoRA files, samples and loss curves.\n\n"
        "For now, each run's files are in its folder under `runs/` in the data folder; the *Train* tab shows "
        "the newest run.",
        elem_id="results-placeholder")
