"""The Dataset tab's caption editor: the gallery of the loaded folder, one image large with its caption beside it,
Previous/Next, the caption's tags as chips with their counts in the folder, a tag filter, and the bulk caption tools.

An edited caption is written when the user moves away from it (another image, a page, a filter, a bulk tool, another
folder): the text is compared with what was read into the editor, so an unchanged caption is never rewritten. The
folder's state (a gr.State per browser session) holds:

- ``folder``, ``images``: the loaded folder and every image it trains on (paths as strings);
- ``tag``, ``walk``: the filter's tag (lower case, or None) and the images the gallery, paging, Previous/Next and
  "Image n of N" walk: those whose caption has the tag, or all of them;
- ``page``: the gallery page shown; ``selected``: the image in the editor (a path, or None);
- ``caption``: the selected image's caption as read, to tell an edit; ``counts``: {tag: images} over the folder;
  ``recounted``: the counts changed since the tag table and the filter box were last drawn.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from app.datasets import (
    PAGE_SIZE,
    PREVIEW_PX,
    PREVIEWS_DIR,
    THUMBS_DIR,
    add_trigger,
    caption_tags,
    find_replace,
    page_of,
    read_caption,
    remove_tag,
    save_caption,
    step_in,
    tag_frequency,
    thumbnail,
    with_tag,
)
from app.tabs.context import AppContext
from training.contract.errors import UserError
from training.contract.services import md_escape

if TYPE_CHECKING:
    from app.tabs.dataset import Ui

LABEL_CHARS = 80
PREVIEW_HINT = "Click an image in the gallery to see it large and edit its caption"
# The chips: one button per tag of the shown caption; a click sends the tag to the server as the click's data.
CHIPS_TEMPLATE = ("{{#each value}}<button type='button' class='chip{{#if this.active}} active{{/if}}' "
                  "data-tag='{{this.tag}}' "
                  "title='Show only the images tagged {{this.tag}}'>{{this.tag}} · {{this.count}}</button>{{/each}}")
CHIPS_CSS = ("padding-top: 28px; "  # below the block's label, which floats over the top
             "button.chip { margin: 0 6px 6px 0; padding: 2px 10px; border-radius: 999px; cursor: pointer; "
             "font-size: var(--text-md); font-weight: normal; border: 1px solid var(--border-color-primary); "
             "background: var(--background-fill-secondary); } "
             "button.chip:hover, button.chip.active { border-color: var(--color-accent); } "
             "button.chip.active { background: var(--color-accent-soft); }")
CHIPS_JS = """
element.addEventListener('click', (event) => {
  const chip = event.target.closest('button[data-tag]');
  if (chip) {
    trigger('click', {tag: chip.dataset.tag});
  }
});
"""


def new_state(folder: Path, images: list[Path], ext: str) -> dict[str, Any]:
    """A freshly loaded folder: no filter, nothing selected, its tags counted."""
    state = {"folder": str(folder), "images": [str(p) for p in images], "tag": None, "walk": [], "page": 1,
             "selected": None, "caption": "", "counts": {}}
    recount(state, ext)
    return state


def recount(state: dict[str, Any], ext: str) -> None:
    """Re-read every caption after one changed: the tag counts and the images the filter lets through."""
    images = [Path(p) for p in state["images"]]
    state["counts"] = dict(tag_frequency(images, ext))  # most frequent first
    tag = state.get("tag")
    state["walk"] = [str(p) for p in with_tag(images, tag, ext)] if tag else list(state["images"])
    state["recounted"] = True


# --- what the editor shows


def _gallery(ctx: AppContext, state: dict[str, Any] | None, ext: str) -> tuple[Any, str]:
    """The page's thumbnails (the selected one highlighted when it is on this page) and the page line."""
    if not state:
        return gr.Gallery(value=[], selected_index=None), ""
    folder = Path(state["folder"])
    shown, page, pages = page_of([Path(p) for p in state["walk"]], state["page"])
    state["page"] = page
    thumbs = ctx.settings.data_dir / THUMBS_DIR
    items = [(str(thumbnail(p, thumbs)), _label(folder, p, ext)) for p in shown]
    count = len(state["walk"])
    total = f"{count} of {len(state['images'])}" if state.get("tag") else f"{count}"
    # Always say which thumbnail is selected: the browser keeps its highlight at the same index when only the
    # images change, which would mark an image of another page.
    return gr.Gallery(value=items, selected_index=_on_page(state)), f"Page {page} of {pages} · {total} image(s)"


def _position(state: dict[str, Any]) -> int | None:
    """The selected image's place among the images walked, or None (none selected, or filtered out)."""
    selected = state.get("selected")
    return state["walk"].index(selected) if selected in state["walk"] else None


def _on_page(state: dict[str, Any]) -> int | None:
    """The selected image's index on the shown page, or None when it is on another page (or not shown at all)."""
    position = _position(state)
    if position is None or position // PAGE_SIZE + 1 != state["page"]:
        return None
    return position % PAGE_SIZE


def _label(folder: Path, image: Path, ext: str) -> str:
    try:
        caption = " ".join(read_caption(image, ext).split()) or "(no caption)"
    except UserError:
        caption = "(caption unreadable)"
    caption = caption if len(caption) <= LABEL_CHARS else caption[: LABEL_CHARS - 1] + "…"
    return f"{image.relative_to(folder)}: {caption}"


def _where(state: dict[str, Any]) -> str:
    """'Image n of N' among the images walked (with the filter's tag), or why the image is outside them."""
    position, tag = _position(state), state.get("tag")
    with_filter = f" with '{md_escape(tag)}'" if tag else ""
    if position is None:
        return f"Not one of the {len(state['walk'])} image(s){with_filter}: Previous/Next go to the nearest one"
    return f"Image {position + 1} of {len(state['walk'])}{with_filter}"


def _chips(state: dict[str, Any] | None, caption: str) -> list[dict[str, Any]]:
    """The caption's tags, each with the number of images in the folder whose caption has it (the filter's tag
    marked)."""
    counts = state.get("counts", {}) if state else {}
    active = state.get("tag") if state else None
    return [{"tag": tag, "count": counts.get(tag.lower(), 0), "active": tag.lower() == active}
            for tag in caption_tags(caption)]


def _filter_view(state: dict[str, Any] | None) -> tuple[Any, Any, str]:
    """The tag table, the filter box (tags with counts, most frequent first) and how many images the filter
    lets through."""
    counts: dict[str, int] = dict(state["counts"]) if state else {}
    tag = state.get("tag") if state else None
    rows = [[t, n] for t, n in counts.items()]
    if tag and tag not in counts:
        counts[tag] = 0  # a filter whose last image lost the tag: still shown, with its count
    choices = [(f"{t} · {n}", t) for t, n in counts.items()]
    message = f"{len(state['walk'])} of {len(state['images'])} images have '{md_escape(tag)}'" if tag else ""
    return rows, gr.Dropdown(choices=choices, value=tag), message


def selection(ctx: AppContext, state: dict[str, Any] | None, ext: str, image: str | None, message: str = "",
              page: int | None = None) -> tuple[Any, ...]:
    """Show ``image`` (None: none) large with its caption, chips and the gallery page it is on (``page``: that
    page instead), in the order of ``Ui.selection``."""
    # The tag table and the filter box (every tag of the folder) are sent only after a recount, not on every step.
    filters = _filter_view(state) if not state or state.get("recounted") else (gr.skip(),) * 3
    if state:
        state = {**state, "selected": image, "caption": "", "recounted": False}
        position = _position(state)
        state["page"] = page if page is not None else (position // PAGE_SIZE + 1 if position is not None
                                                       else state["page"])
    gallery, page_text = _gallery(ctx, state, ext)
    if not state or image is None:
        return gallery, page_text, state, None, PREVIEW_HINT, "", "", message, [], *filters
    path = Path(image)
    preview = str(thumbnail(path, ctx.settings.data_dir / PREVIEWS_DIR, PREVIEW_PX))
    name = str(path.relative_to(state["folder"]))
    try:
        state["caption"] = read_caption(path, ext)
    except UserError as err:
        message = _joined(message, f"**Cannot edit:** {reason(err)}")
    return (gallery, page_text, state, preview, _where(state), name, state["caption"], message,
            _chips(state, state["caption"]), *filters)


def _joined(*messages: str) -> str:
    return " ".join(m for m in messages if m)


def reason(err: Exception) -> str:
    """The error as one markdown-safe line."""
    if isinstance(err, OSError) and not isinstance(err, UserError):
        return md_escape(f"{err.filename or ''}: {err.strerror or err}".strip(": "))
    return md_escape(str(err))


# --- saving on leave


def leave(state: dict[str, Any] | None, text: str | None, ext: str) -> tuple[str, bool]:
    """Save the selected image's caption if the user edited it: (message, whether the editor may move on). Nothing is
    written when the text is what was read (give or take surrounding spaces, which a save strips). A caption that
    cannot be saved keeps the editor where it is, so the edit is not lost."""
    if not state or not state.get("selected") or (text or "").strip() == (state.get("caption") or "").strip():
        return "", True
    try:
        saved = save_caption(Path(state["selected"]), text or "", ext)
    except (UserError, OSError) as err:
        return f"**Not saved:** {reason(err)}. The edit is still in the box: save it again or undo it.", False
    state["caption"] = (text or "").strip()
    recount(state, ext)
    return f"Saved {md_escape(saved.name)}.", True


def _image_of(state: dict[str, Any] | None, image: str) -> Path:
    """The loaded folder's image named ``image`` (relative to the folder). Only images of the loaded folder can be
    edited: the API must not become a way to write .txt files anywhere on the server."""
    if not state:
        raise UserError("no folder loaded: load a dataset folder first")
    if not (image or "").strip():
        raise UserError("no image selected: click one in the gallery first")
    folder = Path(state["folder"])
    path = Path(os.path.normpath(folder / image.strip()))  # not resolve(): a symlinked image is still listed
    if str(path) not in set(state["images"]):
        raise UserError(f"'{image}' is not an image of the loaded folder {folder}: click one in the gallery")
    return path


# --- wiring


def wire_editor(ctx: AppContext, ui: Ui) -> None:
    _wire_browsing(ctx, ui)
    _wire_filter(ctx, ui)
    _wire_captions(ctx, ui)


def _skip_all(ui: Ui) -> tuple[Any, ...]:
    return tuple(gr.skip() for _ in ui.selection)


def _only_message(ui: Ui, message: str) -> tuple[Any, ...]:
    """Nothing redrawn but the caption's message: the editor stays where it is."""
    out = list(_skip_all(ui))
    out[ui.selection.index(ui.caption_message)] = message
    return tuple(out)


def _move(ctx: AppContext, ui: Ui, state: dict[str, Any], ext: str, text: str,
          target: Callable[[dict[str, Any]], str | None], page: Callable[[dict[str, Any]], int | None] | None = None,
          ) -> tuple[Any, ...]:
    """Save the shown caption if edited, then show the image ``target(state)`` picks (after the save: a saved
    caption can change which images the filter lets through); None keeps the shown image."""
    message, moved = leave(state, text, ext)
    if not moved:
        return _only_message(ui, message)
    image = target(state) or state.get("selected")
    return selection(ctx, state, ext, image, message, page(state) if page else None)


def _wire_browsing(ctx: AppContext, ui: Ui) -> None:
    ext = ctx.components["caption_extension"]

    def select(state: dict[str, Any] | None, caption_extension: str, text: str,
               evt: gr.SelectData) -> tuple[Any, ...]:
        if not state or evt.index is None:
            return _skip_all(ui)
        position = (state["page"] - 1) * PAGE_SIZE + int(evt.index)
        walk = state["walk"]
        if not 0 <= position < len(walk) or walk[position] == state.get("selected"):
            return _skip_all(ui)  # also the echo of a selection set from here
        image = walk[position]
        return _move(ctx, ui, state, caption_extension, text, lambda _state: image)

    def step(state: dict[str, Any] | None, caption_extension: str, text: str, delta: int) -> tuple[Any, ...]:
        """The next or previous image walked (the first when none is selected), across page boundaries."""
        if not state:
            return _skip_all(ui)

        def neighbour(now: dict[str, Any]) -> str | None:
            index = step_in(now["walk"], now["images"], now.get("selected"), delta)
            return None if index is None else now["walk"][index]

        return _move(ctx, ui, state, caption_extension, text, neighbour)

    def turn(state: dict[str, Any] | None, caption_extension: str, text: str, delta: int) -> tuple[Any, ...]:
        """Another page of thumbnails; the selected image stays in the editor."""
        if not state:
            return _skip_all(ui)
        return _move(ctx, ui, state, caption_extension, text, lambda _state: None,
                     page=lambda now: now["page"] + delta)

    private = {"api_visibility": "private"}
    inputs = [ui.loaded, ext, ui.caption_text]
    ui.gallery.select(select, inputs=inputs, outputs=ui.selection, **private)
    ui.prev.click(lambda s, e, t: step(s, e, t, -1), inputs=inputs, outputs=ui.selection, **private)
    ui.next.click(lambda s, e, t: step(s, e, t, +1), inputs=inputs, outputs=ui.selection, **private)
    ui.page_prev.click(lambda s, e, t: turn(s, e, t, -1), inputs=inputs, outputs=ui.selection, **private)
    ui.page_next.click(lambda s, e, t: turn(s, e, t, +1), inputs=inputs, outputs=ui.selection, **private)


def _wire_filter(ctx: AppContext, ui: Ui) -> None:
    ext = ctx.components["caption_extension"]

    def filter_by(state: dict[str, Any] | None, caption_extension: str, text: str, tag: str | None
                  ) -> tuple[Any, ...]:
        """Walk only the images whose caption has ``tag`` (None: all). The shown image stays when it has the tag;
        otherwise the first image with it is shown."""
        tag = (tag or "").strip().lower() or None
        if not state or tag == state.get("tag"):
            return _skip_all(ui)  # also the filter box's echo of a filter set from here
        message, moved = leave(state, text, caption_extension)
        if not moved:  # the filter stays as it was, and the filter box says so
            kept = list(_only_message(ui, message))
            kept[ui.selection.index(ui.filter)] = gr.Dropdown(value=state.get("tag"))
            return tuple(kept)
        state["tag"] = tag
        recount(state, caption_extension)
        selected, walk = state.get("selected"), state["walk"]
        image = selected if selected is None or selected in walk else (walk[0] if walk else None)
        return selection(ctx, state, caption_extension, image, message, page=1 if image is None else None)

    def chip(state: dict[str, Any] | None, caption_extension: str, text: str, evt: gr.EventData) -> tuple[Any, ...]:
        tag = evt._data.get("tag") if isinstance(evt._data, dict) else None  # sent by CHIPS_JS
        return filter_by(state, caption_extension, text, str(tag)) if tag else _skip_all(ui)

    private = {"api_visibility": "private"}
    inputs = [ui.loaded, ext, ui.caption_text]
    ui.filter.change(filter_by, inputs=[*inputs, ui.filter], outputs=ui.selection, **private)
    ui.filter_clear.click(lambda s, e, t: filter_by(s, e, t, None), inputs=inputs, outputs=ui.selection, **private)
    ui.chips.click(chip, inputs=inputs, outputs=ui.selection, **private)


def _wire_captions(ctx: AppContext, ui: Ui) -> None:
    ext = ctx.components["caption_extension"]

    def caption_save(image: str, caption: str, caption_extension: str, state: dict[str, Any] | None) -> tuple:
        """Save one image's caption beside it (atomically). ``image`` is its path inside the loaded folder."""
        try:
            path = _image_of(state, image)
            saved = save_caption(path, caption, caption_extension)
        except (UserError, OSError) as err:
            return f"**Not saved:** {reason(err)}", *(gr.skip() for _ in save_out[1:])
        message = f"Saved {md_escape(saved.name)}."
        if str(path) != state.get("selected"):  # an API call: the editor shows another image, or none
            recount(state, caption_extension)
            gallery, page_text = _gallery(ctx, state, caption_extension)
            rows, filter_box, filter_message = _filter_view(state)
            return message, gallery, rows, page_text, state, gr.skip(), gr.skip(), filter_box, filter_message
        state["caption"] = (caption or "").strip()
        recount(state, caption_extension)  # the filter stays, its images recounted
        shown = selection(ctx, state, caption_extension, str(path), message)
        return _pick(ui.selection, shown, save_out)

    def bulk(action, state: dict[str, Any] | None, ext_value: str, text: str, verb: str) -> tuple:
        if not state:
            return "**Nothing changed:** load a dataset folder first", *(gr.skip() for _ in bulk_out[1:])
        saved, moved = leave(state, text, ext_value)  # the bulk edit then includes the user's edit
        if not moved:
            return "**Nothing changed:** the shown caption could not be saved", *_only_message(ui, saved)
        try:
            result = action([Path(p) for p in state["images"]])
        except (UserError, OSError) as err:
            return f"**Nothing changed:** {reason(err)}", *selection(ctx, state, ext_value, state.get("selected"),
                                                                      saved)
        recount(state, ext_value)
        return md_escape(result.message(verb)), *selection(ctx, state, ext_value, state.get("selected"), saved)

    def bulk_trigger(word: str, caption_extension: str, caption: str, state: dict[str, Any] | None) -> tuple:
        """Put a trigger word first in every caption of the loaded folder (skipped where it is already a tag)."""
        return bulk(lambda imgs: add_trigger(imgs, word, caption_extension), state, caption_extension, caption,
                    f"Added '{word.strip()}' to")

    def bulk_remove(word: str, caption_extension: str, caption: str, state: dict[str, Any] | None) -> tuple:
        """Remove a tag (whole comma-separated tag, any case) from every caption of the loaded folder."""
        return bulk(lambda imgs: remove_tag(imgs, word, caption_extension), state, caption_extension, caption,
                    f"Removed '{word.strip()}' from")

    def bulk_replace(find: str, replace: str, caption_extension: str, caption: str,
                     state: dict[str, Any] | None) -> tuple:
        """Replace plain text in every caption of the loaded folder; says how many files changed."""
        return bulk(lambda imgs: find_replace(imgs, find, replace or "", caption_extension), state,
                    caption_extension, caption, f"Replaced '{find}' in")

    save_out = [ui.caption_message, ui.gallery, ui.tags, ui.page, ui.loaded, ui.position, ui.chips, ui.filter,
                ui.filter_message]
    bulk_out = [ui.bulk_message, *ui.selection]
    ui.caption_save.click(caption_save, inputs=[ui.caption_file, ui.caption_text, ext, ui.loaded],
                          outputs=save_out, api_name="caption_save")
    ui.trigger_add.click(bulk_trigger, inputs=[ui.trigger, ext, ui.caption_text, ui.loaded], outputs=bulk_out,
                         api_name="bulk_trigger")
    ui.trigger_remove.click(bulk_remove, inputs=[ui.trigger, ext, ui.caption_text, ui.loaded], outputs=bulk_out,
                            api_name="bulk_remove")
    ui.replace_btn.click(bulk_replace, inputs=[ui.find, ui.replace, ext, ui.caption_text, ui.loaded],
                         outputs=bulk_out, api_name="bulk_replace")


def _pick(components: list[Any], values: tuple[Any, ...], wanted: list[Any]) -> tuple[Any, ...]:
    """The values of ``wanted`` out of ``values`` (one per component of ``components``)."""
    by_id = {id(c): v for c, v in zip(components, values, strict=True)}
    return tuple(by_id[id(c)] for c in wanted)
