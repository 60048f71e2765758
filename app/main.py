"""The Gradio app: tabs Dataset, Model & preset, Train, Results, Tools; ``launch(settings)`` serves it.

Imports neither torch nor diffusers (docs/architecture.md): training runs in child processes started by
JobSupervisor, so the page is up within seconds and survives a trainer crash.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import gradio as gr

from app.console import without_share_hint
from app.device import DeviceProbe, shared_probe
from app.form import default_values, field_specs, key_css, make_component
from app.settings import Settings
from app.supervisor import JobSupervisor
from app.tabs.context import AppContext
from app.tabs.dataset import build_dataset_tab
from app.tabs.model import build_model_tab
from app.tabs.results import build_results_tab
from app.tabs.tools import build_tools_tab
from app.tabs.train import build_train_tab

TITLE = "LoraForge"
# Gradio deletes its copies of uploads and served files older than a day, hourly, and all of them when it stops.
DELETE_CACHE = (3600, 86400)
# Help text as readable as the labels (Gradio's default is pale); each field's config key in small monospace
# beside its friendly label (key_css); a field's check message in red under it.
CSS = """
.info-text { color: var(--body-text-color) !important; opacity: 0.85; }
[id^="cfg-"] [data-testid="block-info"]::after, [id^="cfg-"] .label-text::after {
  font-family: var(--font-mono); font-size: 0.78em; font-weight: normal; margin-left: 0.6em; opacity: 0.75; }
.field-error { color: #c62828; font-size: 0.9em; }
.field-error p { color: #c62828 !important; margin: 0; }
"""


def build_app(settings: Settings, supervisor: JobSupervisor | None = None,
              device: DeviceProbe | None = None) -> gr.Blocks:
    """The whole UI on one supervisor (one per process: it owns the run queue of settings.data_dir)."""
    use_gradio_dir(settings.gradio_dir)
    supervisor = supervisor or JobSupervisor(settings.data_dir, dry_run=settings.dry_run)
    device = device or shared_probe()
    specs = field_specs()
    defaults = default_values()
    with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
        ctx = AppContext(settings, supervisor, specs, {s.name: make_component(s, defaults[s.name]) for s in specs},
                         preset=gr.State(None), form_errors=gr.State({}), device=device)
        gr.Markdown(f"## {TITLE}" + (" · dry run: runs replay synthetic events" if settings.dry_run else ""))
        device_line = gr.Markdown(device.line, elem_id="device-report")
        device_timer = gr.Timer(2.0, active=not device.ready)  # until the background device check answers
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                build_dataset_tab(ctx)
            with gr.Tab("Model & preset", id="model"):
                form = build_model_tab(ctx)
            with gr.Tab("Train", id="train"):
                attach = build_train_tab(ctx)
            with gr.Tab("Results", id="results") as results_tab:
                results = build_results_tab(ctx)
            with gr.Tab("Tools", id="tools") as tools_tab:
                build_tools_tab(ctx, tools_tab)
        demo.load(attach.fn, outputs=attach.outputs, api_visibility="private").then(
            attach.controls, inputs=attach.controls_inputs, outputs=attach.controls_outputs,
            api_visibility="private")
        # The saved form comes back, then its checks fill form_errors (which the Start button follows).
        # A marker once it is back: the browser tests wait for it before typing (a field typed into earlier would be
        # overwritten by the restore).
        form_ready = gr.HTML("", elem_id="form-ready", padding=False)
        demo.load(form.fn, outputs=form.outputs, api_visibility="private").then(
            form.check, inputs=form.check_inputs, outputs=form.check_outputs, api_visibility="private").then(
            lambda: '<span data-ready="1"></span>', outputs=form_ready, api_visibility="private")
        # Opening Results re-lists the runs (a run may have finished since), keeping the one picked.
        results_tab.select(results.fn, inputs=results.inputs, outputs=results.outputs, api_visibility="private")
        demo.load(results.fn, inputs=results.inputs, outputs=results.outputs, api_visibility="private")

        def device_report() -> tuple[str, Any]:
            """The device line: GPU, torch and CUDA versions, or that training would run on the CPU."""
            return device.line, gr.Timer(active=not device.ready)

        demo.load(device_report, outputs=[device_line, device_timer], api_name="device_report")
        device_timer.tick(device_report, outputs=[device_line, device_timer], api_visibility="private")
    return demo


def use_gradio_dir(folder: Path) -> None:
    """Make ``folder`` Gradio's temp folder, emptied first: uploads stay inside the data dir instead of the system
    temp folder, and none left from an earlier session linger. Gradio reads GRADIO_TEMP_DIR when each component is
    made and when the server starts, so this runs before both."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)


def launch_options(settings: Settings) -> dict[str, Any]:
    """Arguments for demo.launch, shared with the tests' in-process server. A public share link only when asked
    for (--share, which requires --auth); run_history=False keeps runs out of browser storage; only the data dir is
    servable beyond cwd."""
    return {"server_name": settings.host, "server_port": settings.port, "auth": settings.auth,
            "inbrowser": settings.open_browser, "allowed_paths": [str(settings.data_dir)], "share": settings.share,
            "run_history": False, "css": CSS + key_css(field_specs())}


def launch(settings: Settings) -> None:
    """Serve on settings.host:port until Ctrl+C or SIGTERM. Loopback unless told otherwise. The device check starts
    first so it runs while the page is built; its line is printed when it answers. The run queue advances in this
    process, page or no page; on the way out the running run is stopped so it saves its LoRA and state."""
    shared_probe()
    supervisor = JobSupervisor(settings.data_dir, dry_run=settings.dry_run)
    demo = build_app(settings, supervisor)
    held = supervisor.held()
    calm_idle_queue(demo.queue(default_concurrency_limit=1))
    with without_share_hint():
        _, url, _ = demo.launch(**launch_options(settings), prevent_thread_lock=True)
    supervisor.run_queue()
    login = " · login required (--auth)" if settings.auth else ""
    print(f"LoraForge is ready: {url}{login}  (data folder {settings.data_dir}; Ctrl+C quits)", flush=True)
    if held:
        print(f"{len(held)} run{'s' if len(held) != 1 else ''} queued before the last close wait for you: "
              "Start queue or Cancel them on the Train tab.", flush=True)
    how = wait_for_close(demo)
    print(f"\nClosing LoraForge ({how})...", flush=True)
    try:
        supervisor.close(how, echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:  # a second Ctrl+C: leave at once; a run asked to stop still saves on its own
        print("Not waiting for the runs: each one already asked to stop finishes its save by itself.", flush=True)
    demo.close()


def calm_idle_queue(demo: gr.Blocks) -> None:
    """Gradio's event queue looks for new events every 1 ms while none waits (on Windows every 50 ms): 5-9% of a CPU
    core with nothing to do. Every 50 ms, as on Windows, is idle enough and starts an event at most 50 ms later. The
    attributes are Gradio's internals, so a version without them is left as it is."""
    queue = getattr(demo, "_queue", None)
    for name, interval in (("sleep_when_free", 0.05), ("progress_update_sleep_when_free", 0.1)):
        current = getattr(queue, name, None)
        if isinstance(current, float):
            setattr(queue, name, max(current, interval))


def wait_for_close(demo: gr.Blocks) -> str:
    """Block until Ctrl+C or SIGTERM (or the server stops); returns how it ended, for the console and the runs."""
    ended = ["the server stopped"]

    def on_sigterm(signum: int, frame: Any) -> None:
        ended[0] = "SIGTERM"
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        if ended[0] != "SIGTERM":
            ended[0] = "Ctrl+C"
    finally:
        signal.signal(signal.SIGTERM, previous)
    return ended[0]
