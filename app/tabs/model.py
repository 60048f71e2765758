"""Model & preset: pick a preset to fill the form, edit the settings by section, save or load a TOML file."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import gradio as gr

from app.form import (
    USER_FIELDS,
    FieldSpec,
    Preset,
    config_to_values,
    list_presets,
    presets_for_family,
    values_to_config,
)
from app.model_check import CLIP_SKIP_SDXL, FAMILY_NAMES, detect_model_family, family_problem, preset_mismatch
from app.tabs.context import AppContext, form_handler
from training.contract.config_io import ConfigError, load_config, save_config

OPEN_SECTIONS = ("model", "dataset")  # what most people change; the rest stays folded
TRAIN_TAB_FIELDS: tuple[str, ...] = ()  # shown on the Train tab, next to Start


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


def build_model_tab(ctx: AppContext) -> None:
    all_presets = list_presets()
    presets = {p.key: p for p in all_presets}
    with gr.Row():
        preset = gr.Dropdown(choices=preset_choices(all_presets, None), value=None, label="Preset",
                             info="Fills the form with a starting point; you can change any value after. Once the "
                                  "base model is set, only presets made for its family are offered.",
                             elem_id="preset", scale=1)
        preset_info = gr.Markdown("Pick a preset, or fill the settings yourself.", elem_id="preset-info")
    family_info = gr.Markdown(elem_id="model-family", render=False)
    for section, names in _sections(ctx).items():
        with gr.Accordion(section.capitalize(), open=section in OPEN_SECTIONS, elem_id=f"section-{section}"):
            for name in names:
                ctx.components[name].render()
                if name == "pretrained_model_name_or_path":
                    family_info.render()
    with gr.Row():
        path_box = gr.Textbox(value=str(ctx.settings.configs_dir / "my-run.toml"), label="Config file",
                              info=f"A .toml file under {ctx.settings.data_dir}", elem_id="config-path", scale=3)
        save_btn = gr.Button("Save TOML", elem_id="save-toml", scale=0)
        load_btn = gr.Button("Load TOML", elem_id="load-toml", scale=0)
    message = gr.Markdown(elem_id="config-message")

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

    def load_toml(path_text: str) -> tuple[Any, ...]:
        path, error = config_path(ctx, path_text)
        cfg = None
        if path is not None:
            try:
                cfg, _notes = load_config(path)
            except ConfigError as err:
                error = str(err)
        if cfg is None:
            return (*(gr.skip() for _ in ctx.specs), f"**Not loaded:** {error}")
        values = config_to_values(cfg)
        return (*(values[s.name] for s in ctx.specs), f"Loaded {path}.\n{cli_command(path)}")

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
    load_btn.click(load_toml, inputs=path_box, outputs=[*form, message], api_name="load_toml")


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


def _sections(ctx: AppContext) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for spec in ctx.specs:
        if spec.name not in TRAIN_TAB_FIELDS:
            grouped.setdefault(spec.section, []).append(spec.name)
    return grouped
