"""The Dataset tab's Auto-caption panel: preview a tagger's or captioner's captions on a few images (nothing
written), caption the whole loaded folder in the background with progress and Stop, then reload the folder's view so
the new captions show in the gallery and the caption editor. The work runs in app.captioning's child process; a
gr.Timer polls it only while a job runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.captioning import EXISTING, KINDS, PREVIEW_IMAGES, CaptionJobs, CaptionRequest, CaptionStatus
from app.datasets import THUMBS_DIR, thumbnail
from app.tabs.context import AppContext
from training.contract.errors import UserError
from training.contract.services import md_escape

POLL_S = 1.0
SHOWN = 24  # the latest images the panel's gallery shows while captioning
HINT = ("Writes a caption file beside every image of the loaded folder. *Preview* writes nothing. A tagger is a "
        "WD14-style folder (model.onnx + selected_tags.csv) or hub id; a captioner a BLIP/Florence-2 folder or hub id.")


@dataclass
class CaptionUi:
    kind: Any
    model: Any
    general: Any
    character: Any
    trigger: Any
    existing: Any
    prompt: Any
    preview: Any
    run: Any
    stop: Any
    status: Any
    gallery: Any
    timer: Any
    section: Any

    @property
    def settings(self) -> list[Any]:
        return [self.kind, self.model, self.general, self.character, self.trigger, self.existing, self.prompt]


def build_caption_panel(ctx: AppContext, loaded: Any, view: list[Any],
                        reload: Callable[[dict[str, Any] | None, str], tuple[Any, ...]]) -> CaptionJobs:
    """Render the panel and wire it. ``loaded`` is the Dataset tab's folder state; ``view`` what ``reload(state,
    caption_extension)`` redraws once a run has written captions."""
    jobs = CaptionJobs(ctx.settings.data_dir, ctx.supervisor.busy, python=ctx.supervisor.python)
    ui = _layout()
    _wire(ctx, ui, jobs, loaded, view, reload)
    return jobs


def _layout() -> CaptionUi:
    with gr.Accordion("Auto-caption", open=False, elem_id="autocap-section") as section:
        gr.Markdown(HINT)
        with gr.Row():
            kind = gr.Radio(list(KINDS), value="tagger", label="Kind", elem_id="autocap-kind",
                            info="tagger: booru tags (anime); captioner: sentences (photos)")
            model = gr.Textbox(label="Model folder or hub id", max_lines=1, scale=3, elem_id="autocap-model",
                               placeholder="SmilingWolf/wd-vit-tagger-v3")
        with gr.Row():
            general = gr.Slider(0, 1, value=0.35, step=0.01, label="General tag threshold (tagger)",
                                elem_id="autocap-general")
            character = gr.Slider(0, 1, value=0.85, step=0.01, label="Character tag threshold (tagger)",
                                  elem_id="autocap-character")
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word (written first)", max_lines=1, elem_id="autocap-trigger")
            existing = gr.Radio(list(EXISTING), value="skip", label="Existing captions", elem_id="autocap-existing")
        prompt = gr.Textbox(label="Prompt (captioners that take one; empty: the model's default)", max_lines=1,
                            elem_id="autocap-prompt")
        with gr.Row():
            preview = gr.Button(f"Preview on {PREVIEW_IMAGES} images", elem_id="autocap-preview")
            run = gr.Button("Caption all", variant="primary", elem_id="autocap-run")
            stop = gr.Button("Stop", variant="stop", elem_id="autocap-stop")
        status = gr.Markdown(elem_id="autocap-status")
        gallery = gr.Gallery(label="Captions proposed or written", columns=4, height=360, object_fit="contain",
                             allow_preview=False, interactive=False, elem_id="autocap-gallery")
        timer = gr.Timer(POLL_S, active=False)
    return CaptionUi(kind, model, general, character, trigger, existing, prompt, preview, run, stop, status,
                     gallery, timer, section)


def _request(state: dict[str, Any] | None, ext: str, kind: str, model: str, general: float | None,
             character: float | None, trigger: str, existing: str, prompt: str) -> CaptionRequest:
    if not state:
        raise UserError("no folder loaded: load a dataset folder first")
    return CaptionRequest(Path(state["folder"]), kind, model or "", general, character, trigger or "",
                          existing or "skip", prompt or "", ext or ".txt")


def _items(ctx: AppContext, status: CaptionStatus) -> list[tuple[str, str]]:
    """The latest images with their captions; an image that cannot be read is left out, not an error."""
    thumbs = ctx.settings.data_dir / THUMBS_DIR
    items = []
    for path, caption in status.items[-SHOWN:]:
        try:
            items.append((str(thumbnail(Path(path), thumbs)), f"{Path(path).name}: {caption}"))
        except (UserError, OSError):
            continue
    return items


def _wire(ctx: AppContext, ui: CaptionUi, jobs: CaptionJobs, loaded: Any, view: list[Any],
          reload: Callable[[dict[str, Any] | None, str], tuple[Any, ...]]) -> None:
    ext = ctx.components["caption_extension"]

    def start(preview: bool, state, caption_extension, *settings) -> tuple[Any, ...]:
        try:
            status = jobs.start(_request(state, caption_extension, *settings), preview=preview)
        except UserError as err:
            # The timer is left as it is: a refusal while a job runs must not stop that job's progress.
            return f"**Not started:** {md_escape(str(err))}", gr.skip(), gr.skip()
        return md_escape(status.line), [], gr.Timer(active=True)

    def caption_preview(state, caption_extension, *settings) -> tuple[Any, ...]:
        """Propose captions for the loaded folder's first images; writes nothing."""
        return start(True, state, caption_extension, *settings)

    def caption_all(state, caption_extension, *settings) -> tuple[Any, ...]:
        """Caption every image of the loaded folder in the background."""
        return start(False, state, caption_extension, *settings)

    def tick(state, caption_extension) -> tuple[Any, ...]:
        status = jobs.poll()
        line = f"**Not captioned:** {md_escape(status.line)}" if status.error else md_escape(status.line)
        if status.running:
            return line, _items(ctx, status), gr.skip(), *(gr.skip() for _ in view)
        # Over: stop polling; a run that may have written captions reloads the folder's view to show them.
        redraw = reload(state, caption_extension) if state and not status.preview else [gr.skip() for _ in view]
        return line, _items(ctx, status), gr.Timer(active=False), *redraw

    def attach() -> tuple[Any, ...]:
        # A reloaded page (or another tab) opens the panel with its timer off: follow a job that is still running.
        status = jobs.poll()
        if not status.running:
            return gr.skip(), gr.skip(), gr.skip()
        return md_escape(status.line), _items(ctx, status), gr.Timer(active=True)

    inputs = [loaded, ext, *ui.settings]
    start_out = [ui.status, ui.gallery, ui.timer]
    ui.preview.click(caption_preview, inputs=inputs, outputs=start_out, api_visibility="private")
    ui.run.click(caption_all, inputs=inputs, outputs=start_out, api_visibility="private")
    ui.stop.click(lambda: jobs.stop(), outputs=ui.status, api_visibility="private")
    ui.section.expand(attach, outputs=start_out, api_visibility="private")
    ui.timer.tick(tick, inputs=[loaded, ext], outputs=[ui.status, ui.gallery, ui.timer, *view],
                  api_visibility="private")
