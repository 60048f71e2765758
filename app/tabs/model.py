"""Model & preset: pick a preset to fill the form, edit the settings by section, save or load a TOML file."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.form import (
    USER_FIELDS,
    FieldSpec,
    Preset,
    bitsandbytes_installed,
    cpu_fallback_note,
    form_problems,
    list_presets,
    load_form,
    loaded_values,
    presets_for_family,
    save_form,
    values_to_config,
)
from app.model_check import CLIP_SKIP_SDXL, FAMILY_NAMES, detect_model_family, family_problem, preset_mismatch
from app.tabs.context import AppContext, form_handler
from app.tabs.network_section import NetworkSection, build_network_choice, wire_network_choice
from app.tabs.prompt_editor import build_prompt_editor
from training.contract.config_io import ConfigError, load_config, save_config

OPEN_SECTIONS = ("model",)  # what everyone sets; the rest stays folded


def config_path(ctx: AppContext, text: str) -> tuple[Path | None, str | None]:
    """A .toml path under the data dir (relative paths are taken from its configs/ folder), or an error line.
    Confined to the data dir because the UI may be served to another computer."""
    if not text or not text.strip():
        return None, "Give a file name, e.g. my-run.toml"
    path = Path(text.strip()).expanduser()
    path = (path if path.is_absolute() else ctx.settings.configs_dir / path).resolve()
    if not path.is_relative_to(ctx.settings.data_dir):
        return None, f"{path} is outside the data folder {ctx.settings.data_dir}; save configs under it"
    if path.suffix != ".toml":
        return None, f"{path.name}: config files end in .toml"
    return path, None


def cli_command(path: Path) -> str:
    return f"```\npython -m training --config {shlex.quote(str(path))}\n```"


def build_model_tab(ctx: AppContext) -> FormRestore:
    all_presets = list_presets()
    presets = {p.key: p for p in all_presets}
    with gr.Row():
        preset = gr.Dropdown(choices=preset_choices(all_presets, None), value=None, label="Preset",
                             info="Fills the form with a starting point; you can change any value after. Once the "
                                  "base model is set, only presets made for its family are offered.",
                             elem_id="preset", scale=1)
        with gr.Column(scale=2):
            preset_info = gr.Markdown("Pick a preset, or fill the settings yourself.", elem_id="preset-info")
            device_note = gr.Markdown(elem_id="device-note")
    family_info = gr.Markdown(elem_id="model-family", render=False)
    network: NetworkSection | None = None
    errors = {name: gr.Markdown(visible=False, elem_id=f"err-{name}", elem_classes=["field-error"], render=False)
              for name in shown_fields(ctx)}
    for section, (basic, advanced) in layout(ctx).items():
        with gr.Accordion(section.capitalize(), open=section in OPEN_SECTIONS, elem_id=f"section-{section}"):
            here = build_network_choice(ctx) if section == "network" else None
            render_fields(ctx, basic, errors, family_info)
            if here:
                here.size.render()
            if advanced:
                with gr.Accordion("Advanced", open=False, elem_id=f"advanced-{section}") as folded:
                    plain, topics = by_topic(advanced)
                    render_fields(ctx, plain, errors, family_info)
                    for topic, names in topics.items():
                        with gr.Accordion(topic, open=False, elem_id=f"topic-{slug(topic)}"):
                            render_fields(ctx, names, errors, family_info)
                if here:
                    wire_network_choice(ctx, here, folded)
                    network = here
    with gr.Row():
        path_box = gr.Textbox(value=str(ctx.settings.configs_dir / "my-run.toml"), label="Config file",
                              info=f"A .toml file under {ctx.settings.data_dir}", elem_id="config-path", scale=3)
        save_btn = gr.Button("Save TOML", elem_id="save-toml", scale=0)
        load_btn = gr.Button("Load TOML", elem_id="load-toml", scale=0)
        kohya_box = gr.Checkbox(False, label="kohya file", elem_id="kohya-file", scale=0,
                                info="Load TOML fills what the file leaves out with sd-scripts' defaults, not ours "
                                     "(a file sd-scripts wrote is recognised without this)")
    message = gr.Markdown(elem_id="config-message")
    assert network is not None, "the config has a network section"

    applied = gr.State(None)  # the preset this page last applied
    clip_skip_spec = next(s for s in ctx.specs if s.name == "clip_skip")

    def pick_preset(key: str | None, last: str | None, model: str) -> tuple[Any, ...]:
        # A repeated event for the same choice (the dropdown re-fires on blur) must not undo edits made since.
        if not key or key not in presets or key == last:
            return (*(gr.skip() for _ in ctx.specs), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        p = presets[key]
        try:
            values = p.values()
        except ConfigError as err:
            return (*(gr.skip() for _ in ctx.specs), f"**Preset not usable:** {err}", None, None, gr.skip())
        family, line = family_text(model, p.record())
        # Each field the preset fills says why (the preset file's comment), or its general reason again.
        fill = (gr.skip() if s.name in USER_FIELDS else
                gr.update(value=values[s.name], info=field_info(s, p, family)) for s in ctx.specs)
        return (*fill, preset_text(p, model), p.record(), key, line)

    def show_family(model: str, picked: str | None, record: dict[str, Any] | None,
                    last: str | None) -> tuple[Any, ...]:
        """The detected family, the presets made for it, and whether the preset applied still fits the model."""
        family, line = family_text(model, record)
        offered = preset_choices(all_presets, family)
        record_key = (record or {}).get("key")
        # The dropdown shows the preset in force while it is offered; one of another family is cleared from it
        # (the form keeps its values and Start still refuses it, so the lines below say why).
        keep = next((k for k in (record_key, picked) if k in {key for _, key in offered}), None)
        applied_preset = presets.get(record_key or "")
        info = preset_text(applied_preset, model) if applied_preset else gr.skip()
        clip_skip = field_info(clip_skip_spec, applied_preset, family)
        now_applied = keep if keep == record_key else (last if keep else None)  # a cleared choice can be picked again
        return line, gr.update(choices=offered, value=keep), info, now_applied, gr.update(info=clip_skip)

    def save_toml(values: dict[str, Any]) -> str:
        """Save the settings as a TOML file under the data folder."""
        path, error = config_path(ctx, values.pop("config_file", None) or "")
        if error:
            return f"**Not saved:** {error}"
        cfg, error = values_to_config(values)
        if cfg is None:
            return f"**Not saved:** {error}"
        try:
            save_config(cfg, path)
        except OSError as err:
            return f"**Not saved:** {path}: {err.strerror or err}"
        return f"Saved {path}. The same run from a terminal:\n{cli_command(path)}"

    def load_toml(path_text: str, kohya_file: bool) -> tuple[Any, ...]:
        """Fill the form from a file; a kohya file's omitted keys take sd-scripts' defaults, and the message lists
        what was ignored and which defaults were taken."""
        path, error = config_path(ctx, path_text)
        cfg, notes = None, []
        if path is not None:
            try:
                cfg, notes = load_config(path, kohya=True if kohya_file else None)
            except ConfigError as err:
                error = str(err)
        if cfg is None:
            return (*(gr.skip() for _ in ctx.specs), f"**Not loaded:** {error}")
        values = loaded_values(cfg)
        listed = "".join(f"\n- {note.removeprefix(f'{path.name}: ')}" for note in notes)
        command = cli_command(path).replace("--config", "--kohya --config", 1) if kohya_file else cli_command(path)
        return (*(values[s.name] for s in ctx.specs), f"Loaded {path}.{listed}\n\n{command}")

    form = ctx.form_inputs
    model_box = ctx.components["pretrained_model_name_or_path"]
    preset.input(pick_preset, inputs=[preset, applied, model_box],
                 outputs=[*form, preset_info, ctx.preset, applied, family_info], api_visibility="private")
    model_box.change(show_family, inputs=[model_box, preset, ctx.preset, applied],
                     outputs=[family_info, preset, preset_info, applied, ctx.components["clip_skip"]],
                     api_name="model_family")
    save_inputs = ctx.form_kwargs(config_file=path_box)
    save_btn.click(form_handler(save_toml, list(save_inputs)), inputs_kwargs=save_inputs, outputs=message,
                   api_name="save_toml")
    load_btn.click(load_toml, inputs=[path_box, kohya_box], outputs=[*form, message], api_name="load_toml")
    return wire_form_state(ctx, presets, FormParts(preset, applied, preset_info, device_note, errors, network))


@dataclass
class FormParts:
    """The Model tab's components that the checks and the saved form update besides the fields."""

    preset: Any  # the preset dropdown
    applied: Any  # gr.State: the key of the preset this page last applied
    preset_info: Any
    device_note: Any
    errors: dict[str, Any]  # field name -> the message box under it
    network: NetworkSection  # the Network section's type, preset, reason and size, drawn from the fields


def wire_form_state(ctx: AppContext, presets: dict[str, Preset], parts: FormParts) -> FormRestore:
    """Check the form on every change (messages under the fields, ctx.form_errors, the CPU note) and save it; the
    returned FormRestore puts it back on page load."""
    form, preset, errors = ctx.form_inputs, parts.preset, parts.errors
    restored = gr.State(False)  # set by the page load: edits are saved only once the saved form is back
    watched = {*form, preset, ctx.preset, restored}
    shown = list(errors)
    has_bnb = bitsandbytes_installed()
    note_timer = gr.Timer(2.0, active=not ctx.device.ready)  # the note needs the device check's answer

    def check_form(data: dict[Any, Any]) -> tuple[Any, ...]:
        """Every field's check, shown beside it and shared as form_errors; the note on what this computer uses
        instead; and the form saved for the next page load."""
        values = {s.name: data[ctx.components[s.name]] for s in ctx.specs}
        problems = form_problems(values)
        if data[restored]:
            with contextlib.suppress(OSError):  # the saved form is a convenience: a full disk must not break typing
                save_form(ctx.settings.data_dir, values, data[preset], data[ctx.preset])
        boxes = (gr.update(value=f"⚠ {problems[n]}", visible=True) if n in problems else
                 gr.update(value="", visible=False) for n in shown)
        return (problems, *boxes, device_text(values), *network.redraw(values, data[ctx.preset]))

    def device_text(values: dict[str, Any]) -> str:
        return cpu_fallback_note(values.get("optimizer_type"), values.get("mixed_precision"), ctx.device.line,
                                 has_bnb)

    def refresh_note(optimizer: str, precision: str) -> tuple[str, Any]:
        note = device_text({"optimizer_type": optimizer, "mixed_precision": precision})
        return note, gr.Timer(active=not ctx.device.ready)

    network = parts.network
    check_outputs = [ctx.form_errors, *(errors[n] for n in shown), parts.device_note, *network.outputs]
    gr.on([c.change for c in form] + [preset.change], check_form, inputs=watched, outputs=check_outputs,
          trigger_mode="always_last", show_progress="hidden", api_visibility="private")
    note_timer.tick(refresh_note, inputs=[ctx.components["optimizer_type"], ctx.components["mixed_precision"]],
                    outputs=[parts.device_note, note_timer], api_visibility="private", show_progress="hidden")

    def restore() -> tuple[Any, ...]:
        """The form as last left (a reload, another tab, a restart of the app), with its preset."""
        values, key, record = load_form(ctx.settings.data_dir)
        fill = (values[s.name] if s.name in values else gr.skip() for s in ctx.specs)
        picked = presets.get(key or "") or presets.get((record or {}).get("key") or "")
        model = str(values.get("pretrained_model_name_or_path") or "")
        info = preset_text(picked, model) if picked else gr.skip()
        return (*fill, key if key in presets else None, record, (record or {}).get("key"), info, True)

    return FormRestore(restore, [*form, preset, ctx.preset, parts.applied, parts.preset_info, restored],
                       check_form, watched, check_outputs)


@dataclass
class FormRestore:
    """What main.py wires to demo.load: put the saved form back, then check it (form_errors for the buttons)."""

    fn: Callable[[], tuple[Any, ...]]
    outputs: list[Any]
    check: Callable[[dict[Any, Any]], tuple[Any, ...]]
    check_inputs: set[Any]
    check_outputs: list[Any]


# Each section shows its common fields first and folds the rest under "Advanced".
BASIC_FIELDS = {
    "model": ("pretrained_model_name_or_path", "output_name", "clip_skip"),
    "dataset": ("resolution", "enable_bucket", "shuffle_caption", "keep_tokens"),
    "network": ("network_dim", "network_alpha", "network_train_unet_only", "conv_dim", "conv_alpha"),
    "optimizer": ("optimizer_type", "learning_rate", "lr_scheduler", "unet_lr", "text_encoder_lr"),
    "training": ("max_train_epochs", "max_train_steps", "train_batch_size", "mixed_precision",
                 "gradient_checkpointing", "min_snr_gamma"),
    "sample": ("sample_prompts", "sample_every_n_epochs", "sample_every_n_steps"),
    "save": ("save_every_n_epochs", "save_precision", "save_state"),
}
# The finer options, folded once more inside their section's Advanced by topic: each group is one thing a user looks
# for (the buckets, the loss, the captions, the old saves), and the Advanced part stays a page long.
TOPICS = {
    "Buckets": ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"),
    "Caching": ("cache_latents", "cache_latents_to_disk", "cache_text_encoder_outputs"),
    "Validation": ("validation_split", "validation_every_n_steps"),
    "Continue from a LoRA file": ("network_weights", "dim_from_weights"),
    "Caption options": ("caption_separator", "keep_tokens_separator", "secondary_separator", "caption_prefix",
                        "caption_suffix", "enable_wildcard", "caption_tag_dropout_rate",
                        "caption_dropout_every_n_epochs", "token_warmup_min", "token_warmup_step"),
    "Image augmentation": ("color_aug", "random_crop", "face_crop_aug_range"),
    "Optimizer and schedule arguments": ("optimizer_args", "lr_scheduler_args", "lr_scheduler_type",
                                         "lr_scheduler_power", "lr_scheduler_min_lr_ratio", "lr_decay_steps",
                                         "lr_scheduler_timescale", "scale_weight_norms"),
    "Loss and noise": ("noise_offset", "loss_type", "huber_c", "huber_schedule", "huber_scale",
                       "debiased_estimation_loss",
                       "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "zero_terminal_snr",
                       "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
                       "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength", "min_timestep",
                       "max_timestep"),
    "Loss masks": ("masked_loss", "alpha_mask", "conditioning_data_dir"),
    "Speed and memory": ("torch_compile", "dynamo_backend", "fp8_base", "full_bf16",
                         "max_data_loader_n_workers"),
    "Keeping old saves": ("save_last_n_epochs", "save_last_n_epochs_state", "save_last_n_steps",
                          "save_last_n_steps_state", "save_state_on_train_end", "save_model_as"),
    "File metadata": ("training_comment", "metadata_title", "metadata_author", "metadata_description",
                      "metadata_license", "metadata_tags", "no_metadata"),
}
TOPIC_OF = {name: topic for topic, names in TOPICS.items() for name in names}
MOVED = {"output_name": "model", "logging_dir": "save"}  # shown in another section than its TOML one
# The Dataset tab shows these, beside the folder it loads: where the images come from and how they weigh.
OTHER_TABS = ("train_data_dir", "reg_data_dir", "prior_loss_weight", "dataset_config")
WIDE = ("pretrained_model_name_or_path", "sample_prompts")  # long paths and prompt text: a row of their own
PER_ROW = 3


def shown_fields(ctx: AppContext) -> list[str]:
    return [s.name for s in ctx.specs if s.name not in OTHER_TABS]


def layout(ctx: AppContext) -> dict[str, tuple[list[str], list[str]]]:
    """section -> (basic fields, advanced fields), every field of the form once (those of OTHER_TABS aside); a
    field added to the config and not named in BASIC_FIELDS lands in its section's Advanced."""
    sections: dict[str, tuple[list[str], list[str]]] = {}
    for name in shown_fields(ctx):
        section = MOVED.get(name) or next(s.section for s in ctx.specs if s.name == name)
        basic, advanced = sections.setdefault(section, ([], []))
        (basic if name in BASIC_FIELDS.get(section, ()) else advanced).append(name)
    for section, (basic, _) in sections.items():
        basic.sort(key=BASIC_FIELDS.get(section, ()).index)
    return sections


def by_topic(names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """A section's advanced fields: those without a topic, and the rest grouped by TOPICS (in its order)."""
    topics: dict[str, list[str]] = {topic: [] for topic in TOPICS}
    plain = []
    for name in names:
        (topics[TOPIC_OF[name]] if name in TOPIC_OF else plain).append(name)
    return plain, {topic: grouped for topic, grouped in topics.items() if grouped}


def slug(text: str) -> str:
    return "-".join(text.lower().split())


def render_fields(ctx: AppContext, names: list[str], errors: dict[str, Any], family_info: Any) -> None:
    """Fields in rows of PER_ROW (WIDE ones alone), each with its message box under it."""
    row: list[str] = []
    for name in [*names, None]:
        if name is not None and name not in WIDE:
            row.append(name)
            if len(row) < PER_ROW:
                continue
        if row:
            with gr.Row(equal_height=False):
                for item in row:
                    with gr.Column(min_width=220):
                        ctx.components[item].render()
                        errors[item].render()
            row = []
        if name in WIDE:
            render_wide(ctx, name, errors, family_info)


def render_wide(ctx: AppContext, name: str, errors: dict[str, Any], family_info: Any) -> None:
    ctx.components[name].render()
    errors[name].render()
    if name == "pretrained_model_name_or_path":
        family_info.render()
    if name == "sample_prompts":
        build_prompt_editor(ctx, ctx.components[name])


def preset_choices(presets: list[Preset], family: str | None) -> list[tuple[str, str]]:
    """(label, key) pairs for the preset dropdown: the presets of the model's family, all while it is unknown."""
    return [(p.name, p.key) for p in presets_for_family(presets, family)]


def family_text(model: str, record: dict[str, Any] | None) -> tuple[str | None, str]:
    """(family, the line under the model path): what was detected, and whether the preset in force fits it."""
    family, line = detect_model_family(model)
    mismatch = preset_mismatch(family, model, record) if family else None
    return family, line + (f"\n\n**Does not fit the preset:** {mismatch}." if mismatch else "")


def preset_text(preset: Preset, model: str) -> str:
    """The preset's description, loss band and computed figures (LoRA file size, steps), and a line when it was made
    for another family than the model."""
    band = f" Usual loss band: {preset.loss_band[0]:g}–{preset.loss_band[1]:g}." if preset.loss_band else ""
    text = f"**{preset.name}** ({FAMILY_NAMES.get(preset.family, preset.family)}): {preset.description}{band}"
    figures = preset.figures()
    text += f"\n\n{figures}" if figures else ""
    mismatch = family_problem(model, preset.record())
    return text + (f"\n\n**Does not fit the base model:** {mismatch}." if mismatch else "")


def field_info(spec: FieldSpec, preset: Preset | None, family: str | None) -> str:
    """A field's tooltip: SDXL's own clip_skip rule once the model is SDXL, else the preset's reason or the
    field's general one."""
    if spec.name == "clip_skip" and family == "sdxl":
        return CLIP_SKIP_SDXL
    return preset_info_line(preset, spec) if preset else spec.info


def preset_info_line(preset: Preset, spec: FieldSpec) -> str:
    reason = preset.reasons.get(spec.name)
    return f"{preset.name}: {reason}" if reason else spec.info


