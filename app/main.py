"""The Gradio app: tabs Dataset, Model & preset, Train, Results; ``launch(settings)`` serves it.

Imports neither torch nor diffusers (architecture §1): training runs in child processes started by JobSupervisor,
so the page is up within seconds and survives a trainer crash.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.form import default_values, field_specs, make_component
from app.settings import Settings
from app.supervisor import JobSupervisor
from app.tabs.context import AppContext
from app.tabs.dataset import build_dataset_tab
from app.tabs.model import build_model_tab
from app.tabs.results import build_results_tab
from app.tabs.train import build_train_tab

TITLE = "LoraForge"


def build_app(settings: Settings, supervisor: JobSupervisor | None = None) -> gr.Blocks:
    """The whole UI on one supervisor (one per process: it owns the run queue of settings.data_dir)."""
    supervisor = supervisor or JobSupervisor(settings.data_dir, dry_run=settings.dry_run)
    specs = field_specs()
    defaults = default_values()
    with gr.Blocks(title=TITLE) as demo:
        ctx = AppContext(settings, supervisor, specs, {s.name: make_component(s, defaults[s.name]) for s in specs},
                         preset=gr.State(None))
        gr.Markdown(f"## {TITLE}" + (" · dry run: runs replay synthetic events" if settings.dry_run else ""))
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                build_dataset_tab(ctx)
            with gr.Tab("Model & preset", id="model"):
                build_model_tab(ctx)
            with gr.Tab("Train", id="train"):
                attach = build_train_tab(ctx)
            with gr.Tab("Results", id="results"):
                build_results_tab(ctx)
        demo.load(attach.fn, outputs=attach.outputs, api_visibility="private")
    return demo


def launch_options(settings: Settings) -> dict[str, Any]:
    """Arguments for demo.launch (architecture §5.5), shared with the tests' in-process server. Never a public
    share link; run_history=False keeps runs out of browser storage; only the data dir is servable beyond cwd."""
    return {"server_name": settings.host, "server_port": settings.port, "auth": settings.auth,
            "inbrowser": settings.open_browser, "allowed_paths": [str(settings.data_dir)], "share": False,
            "run_history": False}


def launch(settings: Settings) -> None:
    """Serve on settings.host:port until Ctrl+C. Loopback unless told otherwise."""
    demo = build_app(settings)
    demo.queue(default_concurrency_limit=1).launch(**launch_options(settings))
