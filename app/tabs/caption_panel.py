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

from app.captioning import (
    EXISTING,
    FOLDER_CHOICE,
    KINDS,
    PREVIEW_IMAGES,
    CaptionJobs,
    CaptionRequest,
    CaptionStatus,
    default_choice,
    default_prompt,
    model_choices,
    model_note,
    model_of,
)
from app.datasets import THUMBS_DIR, thumbnail
from app.form import list_presets
from app.tabs.context import AppContext
from training.contract.errors import UserError
from training.contract.presets import PresetInfo
from training.contract.services import md_escape

POLL_S = 1.0
SHOWN = 24  # the latest images the panel's gallery shows while captioning
HINT = ("Writes a caption file beside every image of the loaded folder. *Preview* writes nothing. A tagger writes "
        "booru tags (WD14: model.onnx + selected_tags.csv); a captioner sentences (BLIP, Florence-2, Qwen2.5-VL). "
        "The preset picked on *Model & preset* suggests which, until you choose here yourself.")
PROMPT_HINT = "empty: the model's default"


@dataclass
class CaptionUi:
    kind: Any
    choice: Any  # the model list: the user's folders, the catalogue, "A folder…"
    model: Any  # the folder or hub id typed once "A folder…" is chosen
    note: Any  # what the chosen model is and whether it loads offline
    suggested: Any  # why the panel follows the preset
    touched: Any  # gr.State: the user chose the kind or model here, so a preset no longer changes them
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
        return [self.kind, self.choice, self.model, self.general, self.character, self.trigger, self.existing,
                self.prompt]


def build_caption_panel(ctx: AppContext, loaded: Any, view: list[Any],
                        reload: Callable[[dict[str, Any] | None, str], tuple[Any, ...]]) -> CaptionJobs:
    """Render the panel and wire it. ``loaded`` is the Dataset tab's folder state; ``view`` what ``reload(state,
    caption_extension)`` redraws once a run has written captions."""
    jobs = CaptionJobs(ctx.settings.data_dir, ctx.supervisor.busy, python=ctx.supervisor.python)
    ui = _layout(ctx.settings.data_dir)
    _wire(ctx, ui, jobs, loaded, view, reload)
    _wire_model_choice(ctx, ui)
    return jobs


def _layout(data_dir: Path) -> CaptionUi:
    with gr.Accordion("Auto-caption", open=False, elem_id="autocap-section") as section:
        gr.Markdown(HINT)
        with gr.Row():
            kind = gr.Radio(list(KINDS), value="tagger", label="Kind", elem_id="autocap-kind",
                            info="tagger: booru tags (anime); captioner: sentences (photos)")
            first = default_choice(data_dir, "tagger")
            choice = gr.Dropdown(model_choices(data_dir, "tagger"), value=first, label="Model", scale=3,
                                 elem_id="autocap-choice", info="your folders first (they work offline), then "
                                 "known models from the Hugging Face hub, then any folder or hub id")
        model = gr.Textbox(label="Model folder or hub id", max_lines=1, elem_id="autocap-model", visible=False,
                           placeholder="/path/to/wd-vit-tagger-v3 or owner/name")
        note = gr.Markdown(model_note(data_dir, "tagger", first), elem_id="autocap-model-note")
        suggested = gr.Markdown(elem_id="autocap-suggested")
        with gr.Row():
            general = gr.Slider(0, 1, value=0.35, step=0.01, label="General tag threshold (tagger)",
                                elem_id="autocap-general")
            character = gr.Slider(0, 1, value=0.85, step=0.01, label="Character tag threshold (tagger)",
                                  elem_id="autocap-character")
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word (written first)", max_lines=1, elem_id="autocap-trigger")
            existing = gr.Radio(list(EXISTING), value="skip", label="Existing captions", elem_id="autocap-existing")
        prompt = gr.Textbox(label="Prompt (captioners that take one)", max_lines=1, elem_id="autocap-prompt",
                            placeholder=PROMPT_HINT)
        with gr.Row():
            preview = gr.Button(f"Preview on {PREVIEW_IMAGES} images", elem_id="autocap-preview")
            run = gr.Button("Caption all", variant="primary", elem_id="autocap-run")
            stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="autocap-stop")
        status = gr.Markdown(elem_id="autocap-status")
        gallery = gr.Gallery(label="Captions proposed or written", columns=4, height=360, object_fit="contain",
                             allow_preview=False, interactive=False, elem_id="autocap-gallery")
        timer = gr.Timer(POLL_S, active=False)
    return CaptionUi(kind, choice, model, note, suggested, gr.State(False), general, character, trigger, existing,
                     prompt, preview, run, stop, status, gallery, timer, section)


def _request(state: dict[str, Any] | None, ext: str, kind: str, choice: str | None, typed: str,
             general: float | None, character: float | None, trigger: str, existing: str,
             prompt: str) -> CaptionRequest:
    if not state:
        raise UserError("no folder loaded: load a dataset folder first")
    return CaptionRequest(Path(state["folder"]), kind, model_of(choice, typed), general, character, trigger or "",
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
    buttons = [ui.preview, ui.run, ui.stop]

    def enabled(running: bool) -> tuple[Any, ...]:
        """Preview and Caption all while no job runs, Stop while one does."""
        return gr.update(interactive=not running), gr.update(interactive=not running), gr.update(interactive=running)

    def start(preview: bool, state, caption_extension, *settings) -> tuple[Any, ...]:
        try:
            status = jobs.start(_request(state, caption_extension, *settings), preview=preview)
        except UserError as err:
            # The timer is left as it is: a refusal while a job runs must not stop that job's progress.
            return f"**Not started:** {md_escape(str(err))}", gr.skip(), gr.skip(), *(gr.skip() for _ in buttons)
        return md_escape(status.line), [], gr.Timer(active=True), *enabled(True)

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
            return line, _items(ctx, status), gr.skip(), *enabled(True), *(gr.skip() for _ in view)
        # Over: stop polling; a run that may have written captions reloads the folder's view to show them.
        redraw = reload(state, caption_extension) if state and not status.preview else [gr.skip() for _ in view]
        return line, _items(ctx, status), gr.Timer(active=False), *enabled(False), *redraw

    def attach() -> tuple[Any, ...]:
        # A reloaded page (or another tab) opens the panel with its timer off: follow a job that is still running.
        status = jobs.poll()
        if not status.running:
            return gr.skip(), gr.skip(), gr.skip(), *enabled(False)
        return md_escape(status.line), _items(ctx, status), gr.Timer(active=True), *enabled(True)

    inputs = [loaded, ext, *ui.settings]
    start_out = [ui.status, ui.gallery, ui.timer, *buttons]
    ui.preview.click(caption_preview, inputs=inputs, outputs=start_out, api_visibility="private")
    ui.run.click(caption_all, inputs=inputs, outputs=start_out, api_visibility="private")
    ui.stop.click(lambda: jobs.stop(), outputs=ui.status, api_visibility="private")
    ui.section.expand(attach, outputs=start_out, api_visibility="private")
    ui.timer.tick(tick, inputs=[loaded, ext], outputs=[*start_out, *view],
                  api_visibility="private")


def _wire_model_choice(ctx: AppContext, ui: CaptionUi) -> None:
    """The model list follows the kind, lists folders added since the page opened whenever the panel opens, and
    follows the preset picked on the Model tab until the user chooses a kind or model here."""
    data_dir = ctx.settings.data_dir
    presets = {p.key: p for p in list_presets()}

    def entries(kind: str, value: str) -> Any:
        choices = model_choices(data_dir, kind)
        if value not in {v for _, v in choices}:
            value = default_choice(data_dir, kind)
        return gr.update(choices=choices, value=value)

    def refresh(kind: str, choice: str) -> tuple[Any, str]:
        """The panel opens: folders added since are listed, and the note says whether the model loads now."""
        update = entries(kind, choice)
        return update, model_note(data_dir, kind, update["value"])

    def pick_kind(kind: str, choice: str) -> tuple[Any, ...]:
        """The user changed the kind: the list shows that kind's models ("A folder…" stays chosen)."""
        return entries(kind, choice if choice == FOLDER_CHOICE else ""), True

    def show_choice(kind: str, choice: str) -> tuple[Any, ...]:
        prompt = default_prompt(choice)
        return (gr.update(visible=choice == FOLDER_CHOICE), model_note(data_dir, kind, choice),
                gr.update(placeholder=f"empty: {prompt}" if prompt else PROMPT_HINT))

    def follow_preset(record: dict[str, Any] | None, touched: bool) -> tuple[Any, ...]:
        """The preset's suggested kind and model, with its reason; nothing once the user chose here."""
        key = (record or {}).get("key") or ""
        info = presets.get(key) or (PresetInfo.from_record(record) if record else None)
        suggestion = info.caption_suggestion() if info is not None else None
        if suggestion is None:
            return gr.skip(), gr.skip(), gr.skip(), ""
        kind, model, reason = suggestion
        if touched:
            kept = f"Your choice here is kept; the preset suggests the {kind} {model} ({reason})."
            return gr.skip(), gr.skip(), gr.skip(), kept
        choices = model_choices(data_dir, kind)
        value = default_choice(data_dir, kind, model)
        typed: Any = gr.skip()
        if value not in {v for _, v in choices}:  # a hub id or folder of the preset's own: typed in the box
            value, typed = FOLDER_CHOICE, model
        return kind, gr.update(choices=choices, value=value), typed, f"Suggested by the preset {reason}."

    ui.kind.input(pick_kind, inputs=[ui.kind, ui.choice], outputs=[ui.choice, ui.touched], api_visibility="private")
    for chosen_here in (ui.choice.input, ui.model.input):
        chosen_here(lambda: True, outputs=ui.touched, api_visibility="private")
    ui.choice.change(show_choice, inputs=[ui.kind, ui.choice], outputs=[ui.model, ui.note, ui.prompt],
                     api_visibility="private", show_progress="hidden")
    ui.section.expand(refresh, inputs=[ui.kind, ui.choice], outputs=[ui.choice, ui.note], api_visibility="private",
                      show_progress="hidden")
    ctx.preset.change(follow_preset, inputs=[ctx.preset, ui.touched],
                      outputs=[ui.kind, ui.choice, ui.model, ui.suggested], api_visibility="private",
                      show_progress="hidden")
