"""Dataset: pick, upload and check a training folder; browse it with captions, edit them one by one or in bulk
(the editor, its filter and the bulk tools are wired in app/tabs/caption_editor.py).

The dataset folder box IS the form's ``train_data_dir`` field, rendered here and nowhere else: Load, the gallery,
the upload, *Check dataset* and Start all read that one value. The folder's image paths stay server-side (a
gr.State per browser session): the gallery only ever gets thumbnails and the preview a larger copy, both from the
data dir, and a selection maps back to the source image (a handler would get Gradio's cache copy, and a caption
must be saved beside the original). A change of the box from elsewhere (preset, TOML, demo) or typing reloads the
view; Load, Enter and leaving the box also write a plain dataset name back as its full path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.dataset_import import discard_uploads, import_files
from app.datasets import DATASETS_DIR, list_images, resolve_folder
from app.form import values_to_config
from app.tabs.caption_editor import (
    CHIPS_CSS,
    CHIPS_JS,
    CHIPS_TEMPLATE,
    PREVIEW_HINT,
    leave,
    new_state,
    reason,
    selection,
    wire_editor,
)
from app.tabs.caption_panel import build_caption_panel
from app.tabs.context import AppContext, form_handler
from training.contract.config_io import ConfigError
from training.contract.errors import UserError
from training.contract.services import CONCEPT_DIR, NoTrainingImages, check_dataset, md_escape

# The settings the dataset check reads from the form: the same ones decide buckets and steps in the run.
CHECK_FIELDS = ("train_data_dir", "reg_data_dir", "dataset_config", "caption_extension", "resolution",
                "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "train_batch_size",
                "gradient_accumulation_steps", "max_train_steps", "max_train_epochs", "validation_split",
                "validation_every_n_steps", "seed")
REPORT_HINT = ("*Check dataset* counts images and steps with the form's settings and looks for problems: small, "
               "duplicate or unreadable images, missing or too long captions.")
EXPLORER_IGNORE = ("*.txt", "*[.]txt")  # the same pattern twice: switching between them makes the browser re-list
# Left and right arrow keys step through the images while the preview is on screen and no text box has the focus.
# After a folder loads in the browser: show its first image in the editor by clicking the first thumbnail, the same
# path a user's click takes. In the page only (an API caller, who has no caption box, keeps nothing selected), not
# while the user types in a box (the folder box loads as it is typed: the focus stays there), and not when an image
# is already shown. The thumbnails render a moment after the update, so it looks a few times.
OPEN_FIRST_JS = """
() => {
  let tries = 0;
  const look = () => {
    const typing = document.activeElement && document.activeElement.closest('input, textarea');
    const shown = document.querySelector('#caption-file input');
    if (typing || (shown && shown.value)) { return; }
    const first = document.querySelector('#dataset-gallery .thumbnail-item, #dataset-gallery button img');
    if (first) { first.click(); } else if (++tries < 20) { setTimeout(look, 100); }
  };
  setTimeout(look, 50);
}
"""
ARROW_KEYS_JS = """
if (!window.loraforgeDatasetKeys) {
  window.loraforgeDatasetKeys = true;
  document.addEventListener('keydown', (event) => {
    const typing = event.target.closest('input, textarea, select, [contenteditable]');
    if (typing || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    const id = {ArrowLeft: 'dataset-prev', ArrowRight: 'dataset-next'}[event.key];
    const preview = document.getElementById('dataset-preview');
    if (id && preview && preview.offsetParent !== null) {
      event.preventDefault();
      document.querySelector('#' + id).click();
    }
  });
}
"""


@dataclass
class Ui:
    folder: Any  # the form's train_data_dir
    reg_folder: Any  # the form's reg_data_dir
    reg_message: Any  # what the regularisation folder holds, in one line
    load: Any
    message: Any
    explorer: Any
    upload: Any
    upload_name: Any
    upload_repeats: Any
    upload_concept: Any
    upload_btn: Any
    gallery: Any
    page_prev: Any
    page: Any
    page_next: Any
    preview: Any
    prev: Any
    position: Any
    next: Any
    caption_file: Any
    caption_text: Any
    caption_save: Any
    caption_message: Any
    chips: Any  # the shown caption's tags with their counts; a click filters by the tag
    filter: Any
    filter_clear: Any
    filter_message: Any
    trigger: Any
    trigger_add: Any
    trigger_remove: Any
    find: Any
    replace: Any
    replace_btn: Any
    bulk_message: Any
    tags: Any
    check: Any
    report: Any
    loaded: Any  # gr.State: the loaded folder (caption_editor's docstring), or None

    @property
    def view(self) -> list[Any]:
        """What a (re)load redraws, in the order _view returns it."""
        return [self.folder, self.message, *self.selection, self.report]

    @property
    def selection(self) -> list[Any]:
        """What selecting an image redraws, in the order caption_editor.selection returns it."""
        return [self.gallery, self.page, self.loaded, self.preview, self.position, self.caption_file,
                self.caption_text, self.caption_message, self.chips, self.tags, self.filter, self.filter_message]


def build_dataset_tab(ctx: AppContext) -> None:
    datasets_dir = ctx.settings.data_dir / DATASETS_DIR
    datasets_dir.mkdir(parents=True, exist_ok=True)
    ui = _layout(ctx, datasets_dir)
    _wire_loading(ctx, ui, datasets_dir)
    wire_editor(ctx, ui)
    _wire_check(ctx, ui, datasets_dir)

    def reload(state: dict[str, Any] | None, ext: str) -> tuple[Any, ...]:
        # After auto-captioning: the same folder again, so the gallery and tag table show the new captions.
        return _load(ctx, state["folder"], ext, datasets_dir, None, None, write_back=False)

    build_caption_panel(ctx, ui.loaded, ui.view, reload)


def _layout(ctx: AppContext, datasets_dir: Path) -> Ui:
    gr.Markdown("### Dataset\nA folder of images with `.txt` captions beside them; subfolders named like "
                "`10_mychar` repeat their images 10 times per epoch. This folder is the run's `train_data_dir`: "
                f"any folder on this computer, or the name of a dataset in {datasets_dir}.")
    with gr.Row():
        with gr.Column(scale=4):
            folder = ctx.components["train_data_dir"].render()
        load = gr.Button("Load", variant="primary", scale=0, elem_id="dataset-load")
    message = gr.Markdown(elem_id="dataset-message")
    with gr.Row():
        with gr.Column(scale=3):
            reg_folder = ctx.components["reg_data_dir"].render()
        with gr.Column(scale=1):
            ctx.components["prior_loss_weight"].render()
    reg_message = gr.Markdown(elem_id="dataset-reg-message")
    ctx.components["dataset_config"].render()
    with gr.Accordion("Pick an uploaded dataset", open=False, elem_id="dataset-explorer-section"):
        explorer = gr.FileExplorer(root_dir=datasets_dir, file_count="single", ignore_glob=EXPLORER_IGNORE[0],
                                   label=f"Datasets in {datasets_dir}: open one with ▶, tick its '.' (or an image)",
                                   max_height=300, elem_id="dataset-explorer")
    with gr.Accordion("Upload images or a .zip into a new dataset", open=False, elem_id="dataset-upload-section"):
        upload = gr.File(file_count="multiple", file_types=["image", ".zip", ".txt"], label="Images, captions, .zip",
                         elem_id="dataset-upload")
        with gr.Row():
            upload_name = gr.Textbox(label="Dataset name", max_lines=1, elem_id="dataset-name")
            upload_repeats = gr.Number(10, label="Repeats", precision=0, elem_id="dataset-repeats",
                                       info="Times each image is seen per epoch (folder '10_<concept>')")
            upload_concept = gr.Textbox(label="Concept", max_lines=1, elem_id="dataset-concept",
                                        info="Usually the trigger word or character name")
        upload_btn = gr.Button("Import", elem_id="dataset-import")
    with gr.Row():
        filter_box = gr.Dropdown([], value=None, label="Show only the images tagged", scale=3, filterable=True,
                                 elem_id="dataset-filter", info="Tags of the folder with their image counts")
        filter_clear = gr.Button("Clear", size="sm", scale=0, min_width=80, elem_id="dataset-filter-clear")
        filter_message = gr.Markdown(elem_id="dataset-filter-message")
    gallery = gr.Gallery(label="Images", interactive=False, columns=8, height=340, object_fit="contain",
                         allow_preview=False, elem_id="dataset-gallery")
    with gr.Row():
        page_prev = gr.Button("◀ Page", size="sm", elem_id="dataset-page-prev")
        page = gr.Markdown(elem_id="dataset-page")
        page_next = gr.Button("Page ▶", size="sm", elem_id="dataset-page-next")
    with gr.Row():  # the caption editor: one image large, its caption beside it
        with gr.Column(scale=3):
            preview = gr.Image(label="Preview", type="filepath", interactive=False, height=560,
                               buttons=[], elem_id="dataset-preview")
            with gr.Row():
                prev = gr.Button("◀ Previous", size="sm", elem_id="dataset-prev")
                position = gr.Markdown(PREVIEW_HINT, elem_id="dataset-position")
                nxt = gr.Button("Next ▶", size="sm", elem_id="dataset-next")
            gr.HTML("", js_on_load=ARROW_KEYS_JS, elem_id="dataset-keys")
        with gr.Column(scale=2):
            caption_file = gr.Textbox("", label="Image", interactive=False, max_lines=1, elem_id="caption-file")
            caption_text = gr.Textbox("", label="Caption (saved when you move to another image)", lines=6,
                                      elem_id="caption-text")
            chips = gr.HTML([], html_template=CHIPS_TEMPLATE, css_template=CHIPS_CSS, js_on_load=CHIPS_JS,
                            label="Tags (images in the folder with it); click one to show only those",
                            show_label=True, container=True, elem_id="caption-chips")
            caption_save = gr.Button("Save caption", elem_id="caption-save")
            caption_message = gr.Markdown(elem_id="caption-message")
    with gr.Accordion("Caption tools (all images of the folder)", open=True, elem_id="bulk-section"):
        with gr.Row():
            trigger = gr.Textbox(label="Trigger word or tag", max_lines=1, elem_id="bulk-trigger", scale=3)
            trigger_add = gr.Button("Add first", scale=0, elem_id="bulk-add")
            trigger_remove = gr.Button("Remove", scale=0, elem_id="bulk-remove")
        with gr.Row():
            find = gr.Textbox(label="Find (plain text)", max_lines=1, elem_id="bulk-find")
            replace = gr.Textbox("", label="Replace with", max_lines=1, elem_id="bulk-replace")
            replace_btn = gr.Button("Replace all", scale=0, elem_id="bulk-replace-btn")
        bulk_message = gr.Markdown(elem_id="bulk-message")
        tags = gr.Dataframe(headers=["tag", "images"], datatype=["str", "number"], interactive=False,
                            label="Tag frequency", max_height=300, elem_id="tag-table")
    check = gr.Button("Check dataset", variant="primary", elem_id="dataset-check-btn")
    report = gr.Markdown(REPORT_HINT, elem_id="dataset-report")
    return Ui(folder, reg_folder, reg_message, load, message, explorer, upload, upload_name, upload_repeats,
              upload_concept, upload_btn,
              gallery, page_prev, page, page_next, preview, prev, position, nxt, caption_file, caption_text,
              caption_save, caption_message, chips, filter_box, filter_clear, filter_message, trigger, trigger_add,
              trigger_remove, find, replace, replace_btn, bulk_message, tags, check, report, gr.State(None))


# --- loading, paging and the selected image


def _open(folder: Path, ext: str) -> tuple[dict[str, Any], str]:
    listing = list_images(folder)
    notes = "".join(f"\n\n{md_escape(n)}" for n in listing.notes)
    return new_state(folder, listing.images, ext), f"Loaded `{folder}`: {md_escape(listing.summary())}.{notes}"


def _view(ctx: AppContext, text: Any, ext: str, state: dict[str, Any] | None, message: str) -> tuple[Any, ...]:
    return (text, message, *selection(ctx, state, ext, None), REPORT_HINT)


def _load(ctx: AppContext, text: str, ext: str, datasets_dir: Path, old: dict[str, Any] | None,
          caption: str | None, write_back: bool = True) -> tuple[Any, ...]:
    """The view after loading ``text``; a bad folder empties the gallery and says why in one line (the box keeps
    what was typed). An edited caption of the ``old`` folder's shown image is saved first. ``write_back``: put the
    folder's full path in the box."""
    saved, _ = leave(old, caption, ext)  # a caption that cannot be saved says so; the new folder loads anyway
    try:
        folder = resolve_folder(text, datasets_dir)
        state, message = _open(folder, ext)
    except (UserError, OSError) as err:
        return _view(ctx, gr.skip(), ext, None, _lines(saved, f"**Not loaded:** {reason(err)}"))
    return _view(ctx, str(folder) if write_back else gr.skip(), ext, state, _lines(saved, message))


def _lines(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _picked_folder(path: str, datasets_dir: Path) -> Path:
    """A file picks its folder; a concept folder ('10_cat') inside a dataset picks the dataset."""
    picked = Path(path)
    folder = picked.parent if picked.is_file() else picked
    if CONCEPT_DIR.match(folder.name) and folder.parent != datasets_dir:
        folder = folder.parent
    return folder


def _wire_loading(ctx: AppContext, ui: Ui, datasets_dir: Path) -> None:
    ext = ctx.components["caption_extension"]

    def dataset_load(train_data_dir: str, caption_extension: str = ".txt", caption: str | None = None,
                     state: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """Load a dataset folder (the run's train_data_dir) into the gallery; a dataset's plain name becomes its
        full path."""
        return _load(ctx, train_data_dir, caption_extension, datasets_dir, state, caption)

    def follow(train_data_dir: str, caption_extension: str, caption: str | None,
               state: dict[str, Any] | None) -> tuple[Any, ...]:
        # The box changed (typing, preset, TOML, demo): show that folder, but never rewrite the box while it changes.
        text = (train_data_dir or "").strip()
        try:
            same = bool(state) and resolve_folder(text, datasets_dir) == Path(state["folder"])
        except UserError:
            same = False
        if same:
            return tuple(gr.skip() for _ in ui.view)
        if not text:
            saved, _ = leave(state, caption, caption_extension)
            return _view(ctx, gr.skip(), caption_extension, None, saved)
        return _load(ctx, text, caption_extension, datasets_dir, state, caption, write_back=False)

    def settle(train_data_dir: str) -> Any:
        # Leaving the box: a dataset's plain name becomes its full path, the value Start and the check receive.
        try:
            folder = str(resolve_folder(train_data_dir, datasets_dir))
        except UserError:
            return gr.skip()
        return folder if folder != train_data_dir else gr.skip()

    def pick(path: str | None, caption_extension: str, caption: str | None,
             state: dict[str, Any] | None) -> tuple[Any, ...]:
        if not path:
            return tuple(gr.skip() for _ in ui.view)
        return dataset_load(str(_picked_folder(path, datasets_dir)), caption_extension, caption, state)

    def dataset_upload(files: list[str] | None, name: str, repeats: float | None, concept: str,
                       caption_extension: str = ".txt", generation: int | None = 0, caption: str | None = None,
                       state: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """Import uploaded images, .txt captions or .zip files into <data dir>/datasets/<name>/<repeats>_<concept>
        and make it the run's train_data_dir."""
        uploaded = [Path(f) for f in files or []]
        try:
            result = import_files(uploaded, datasets_dir, name, repeats, concept)
        except (UserError, OSError) as err:
            skipped: list[Any] = [gr.skip() for _ in upload_out]
            skipped[2] = f"**Not imported:** {reason(err)}"  # the dataset message
            return tuple(skipped)  # the files stay uploaded: a corrected name or repeats imports them
        discard_uploads(uploaded, ctx.settings.gradio_dir)
        view = dataset_load(str(result.root), caption_extension, caption, state)
        message = f"{md_escape(result.message())}\n\n{view[1]}"
        generation = (generation or 0) + 1  # a changed ignore_glob makes the browser re-list: the new folder shows
        explorer = gr.FileExplorer(ignore_glob=EXPLORER_IGNORE[generation % 2])
        return (None, view[0], message, *view[2:], explorer, generation)

    explorer_gen = gr.State(0)
    upload_out = [ui.upload, *ui.view, ui.explorer, explorer_gen]
    leaving = [ui.caption_text, ui.loaded]  # what loading another folder saves first: the shown caption, if edited
    ui.load.click(dataset_load, inputs=[ui.folder, ext, *leaving], outputs=ui.view, api_name="dataset_load"
                  ).then(None, js=OPEN_FIRST_JS)
    ui.folder.submit(dataset_load, inputs=[ui.folder, ext, *leaving], outputs=ui.view, api_visibility="private"
                     ).then(None, js=OPEN_FIRST_JS)
    ui.folder.blur(settle, inputs=ui.folder, outputs=ui.folder, api_visibility="private")
    ui.folder.change(follow, inputs=[ui.folder, ext, *leaving], outputs=ui.view, trigger_mode="always_last",
                     api_visibility="private")
    ui.explorer.change(pick, inputs=[ui.explorer, ext, *leaving], outputs=ui.view, api_visibility="private"
                       ).then(None, js=OPEN_FIRST_JS)
    ui.reg_folder.change(reg_summary, inputs=ui.reg_folder, outputs=ui.reg_message, trigger_mode="always_last",
                         api_visibility="private")
    ui.upload_btn.click(dataset_upload, inputs=[ui.upload, ui.upload_name, ui.upload_repeats, ui.upload_concept, ext,
                                                explorer_gen, *leaving], outputs=upload_out, api_name="dataset_upload"
                        ).then(None, js=OPEN_FIRST_JS)


def reg_summary(reg_data_dir: str | None) -> str:
    """One line on the regularisation folder: its class folders and images, and how an epoch uses them."""
    text = (reg_data_dir or "").strip()
    if not text:
        return ""
    folder = Path(text).expanduser()
    if not folder.is_dir():
        return f"**Regularisation folder not found:** `{md_escape(str(folder))}`"
    try:
        listing = list_images(folder)
    except (UserError, OSError) as err:
        return f"**No regularisation images:** {reason(err)}"
    return (f"Regularisation: {md_escape(listing.summary())}; each epoch mixes in as many of them as training "
            "images × repeats (kohya's balance), their loss times `prior_loss_weight`.")


# --- the check


def dataset_report(values: dict[str, Any], datasets_dir: Path) -> str:
    """Check the dataset with the form's settings: images and repeats per concept, problems, buckets, steps.
    A folder without images says so and shows what a dataset folder looks like."""
    text = (values.get("train_data_dir") or "").strip()
    if text and not Path(text).expanduser().is_absolute():
        # A dataset's plain name, as the box and Load take it.
        values = {**values, "train_data_dir": str(datasets_dir / text)}
    cfg, error = values_to_config(values)
    if cfg is None:
        return f"**Not checked:** {md_escape(error or '')}"
    try:
        return check_dataset(cfg).to_markdown()
    except NoTrainingImages as err:
        return err.to_markdown()
    except (UserError, ConfigError, OSError) as err:
        return f"**Not checked:** {reason(err)}"


def _wire_check(ctx: AppContext, ui: Ui, datasets_dir: Path) -> None:
    inputs = {name: ctx.components[name] for name in CHECK_FIELDS}

    def dataset_check(values: dict[str, Any]) -> str:
        """Check the dataset folder (train_data_dir) with the form's settings: concepts, problems, buckets, steps."""
        return dataset_report(values, datasets_dir)

    ui.check.click(form_handler(dataset_check, list(inputs)), inputs_kwargs=inputs, outputs=ui.report,
                   api_name="dataset_check")
