"""The config form: one Gradio component per TrainConfig field, built from the model itself.

A registry (not hand-written components) keeps the form, Save/Load TOML and Start in the same order and the same
names as the CLI: label = the TOML key, tooltip = the field's description, limits = its pydantic limits. Handlers
get and return plain ``{field name: UI value}`` dicts; the conversions to and from TrainConfig live here only.
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.contract.config import SECTIONS, Bounds, TrainConfig, field_bounds, field_section
from training.contract.config_io import ConfigError, config_from_dict, read_toml
from training.contract.presets import PresetInfo
from training.contract.services import FAMILY_LABELS, lora_size, total_steps, trained_parts

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
# What the user brings, not what a preset chooses: picking a preset never overwrites these. (v_parameterization is
# not here: a 768-v preset sets it, because the weights do not reveal it.)
USER_FIELDS = frozenset({"pretrained_model_name_or_path", "v2", "vae", "train_data_dir",
                         "caption_extension", "network_weights", "sample_prompts", "output_dir", "output_name",
                         "resume", "logging_dir"})
AUTO = "auto"  # tri-state booleans (v2, v_parameterization): unset means "detect from the checkpoint"
TRISTATE = {AUTO: None, "true": True, "false": False}


@dataclass(frozen=True)
class FieldSpec:
    """How one TrainConfig field shows in the form. kind: text | number | checkbox | choice | tristate."""

    name: str
    section: str
    kind: str
    optional: bool
    integer: bool = False
    choices: tuple[str, ...] = ()
    bounds: Bounds | None = None  # number: its limits, inclusive or not, as the config enforces them
    info: str = ""


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(inner type, optional) for ``X | None``. A union of several types (``float | list[float]``) stays a union:
    it becomes a text field whose text the config parses."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def field_specs() -> list[FieldSpec]:
    """Every TrainConfig field, in declaration order."""
    specs = []
    for name, info in TrainConfig.model_fields.items():
        inner, optional = _unwrap(info.annotation)
        bounds = field_bounds(name)
        tip = f"{info.description} (allowed: {bounds.text()})" if bounds else info.description
        common = {"name": name, "section": field_section(name), "optional": optional, "info": tip or ""}
        if typing.get_origin(inner) is Literal:
            specs.append(FieldSpec(kind="choice", choices=typing.get_args(inner), **common))
        elif inner is bool:
            specs.append(FieldSpec(kind="tristate" if optional else "checkbox", **common))
        elif inner in (int, float):
            specs.append(FieldSpec(kind="number", integer=inner is int, bounds=bounds, **common))
        else:
            specs.append(FieldSpec(kind="text", **common))
    return specs


def specs_by_section() -> dict[str, list[FieldSpec]]:
    grouped: dict[str, list[FieldSpec]] = {s: [] for s in SECTIONS}
    for spec in field_specs():
        grouped.setdefault(spec.section, []).append(spec)
    return grouped


def make_component(spec: FieldSpec, value: Any) -> Any:
    """The Gradio component for one field, unrendered (the layout places it). Imported late: tests of the pure
    conversions need no Gradio."""
    import gradio as gr

    common = {"label": spec.name, "info": spec.info, "value": value, "elem_id": f"cfg-{spec.name}", "render": False}
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), **common)
    if spec.kind == "tristate":
        return gr.Dropdown(choices=list(TRISTATE), **common)
    if spec.kind == "checkbox":
        return gr.Checkbox(**common)
    if spec.kind == "number":
        # Limits go in the tooltip, not gr.Number(minimum=...): Gradio's own range error does not name the field,
        # while the config check answers "network_dim = 0 is invalid ... (allowed: 1 <= x <= 1024)".
        return gr.Number(precision=0 if spec.integer else None, **common)
    return gr.Textbox(max_lines=1, **common)


def _to_config_value(spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "tristate":
        return TRISTATE.get(str(value), value)
    if spec.kind == "text" and isinstance(value, str):
        value = value.strip()
        return None if spec.optional and not value else value
    if spec.kind == "number":
        if value is None or value == "":
            return None
        if spec.integer and isinstance(value, float) and value.is_integer():
            return int(value)
    return value


def _to_ui_value(spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "tristate":
        return next(k for k, v in TRISTATE.items() if v == value)
    if spec.kind == "text" and value is None:
        return ""
    if spec.kind == "text" and isinstance(value, list | tuple):  # text_encoder_lr's pair: "1e-05, 5e-06"
        return ", ".join(str(v) for v in value)
    if spec.kind == "text" and not isinstance(value, str):
        return str(value)
    return value


def values_to_config(values: dict[str, Any]) -> tuple[TrainConfig | None, str | None]:
    """Form values -> (config, None), or (None, one-line message naming the key). Never raises for bad input."""
    specs = {s.name: s for s in field_specs()}
    flat = {k: _to_config_value(specs[k], v) if k in specs else v for k, v in values.items()}
    try:
        cfg, _notes = config_from_dict(flat, "form")
    except ConfigError as err:
        return None, str(err)
    return cfg, None


def config_to_values(cfg: TrainConfig) -> dict[str, Any]:
    """TrainConfig -> form values for every field."""
    return {s.name: _to_ui_value(s, getattr(cfg, s.name)) for s in field_specs()}


def default_values() -> dict[str, Any]:
    return config_to_values(TrainConfig())


@dataclass(frozen=True)
class Preset(PresetInfo):
    """A presets/*.toml file: its [preset] table (for people) and its settings (for the form)."""

    settings: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # key -> the file's inline comment: why this value

    def config(self) -> TrainConfig:
        """Defaults with the preset's settings on top; ConfigError (one line) for a broken preset."""
        cfg, _notes = config_from_dict(self.settings, f"{self.key}.toml")
        return cfg

    def values(self) -> dict[str, Any]:
        """The form values: defaults with the preset's settings on top (USER_FIELDS included: callers skip them)."""
        return config_to_values(self.config())

    def figures(self) -> str:
        """What the preset's settings make, computed from them: the LoRA file's size for the preset's family and the
        run's steps for the dataset size it was made for."""
        try:
            cfg = self.config()
        except ConfigError:
            return ""
        out = []
        if self.family in FAMILY_LABELS:
            size = lora_size(cfg, self.family)
            out.append(f"LoRA file ≈ {size.megabytes:.1f} MB (rank {cfg.network_dim}, "
                       f"{trained_parts(cfg, self.family)}, {cfg.save_precision}).")
        if self.images_per_epoch:
            out.append(steps_text(cfg, self.images_per_epoch))
        return " ".join(out)


def steps_text(cfg: TrainConfig, images: tuple[int, int]) -> str:
    """``200–400 images × repeats per epoch ÷ batch 2 × 10 epochs ≈ 1,000–2,000 steps``, from the config."""
    if not cfg.max_train_epochs:
        return f"Run length: {cfg.max_train_steps:,} steps (max_train_steps), whatever the dataset's size."
    counts = sorted(set(images))
    accumulated = f" ÷ {cfg.gradient_accumulation_steps} accumulated" if cfg.gradient_accumulation_steps > 1 else ""
    return (f"Run length: {'–'.join(map(str, counts))} images × repeats per epoch ÷ batch {cfg.train_batch_size}"
            f"{accumulated} × {cfg.max_train_epochs} epochs ≈ "
            f"{'–'.join(f'{total_steps(cfg, n):,}' for n in counts)} steps.")


def load_preset(path: Path) -> Preset:
    """Raises ConfigError (one line) for a broken file."""
    info = PresetInfo.read(path) or PresetInfo(key=path.stem, name=path.stem)
    return Preset(**vars(info), settings=read_toml(path), reasons=inline_reasons(path.read_text(encoding="utf-8-sig")))


def inline_reasons(text: str) -> dict[str, str]:
    """``key = value   # why`` lines of a preset: the comment is the field's tooltip once the preset is picked.
    A '#' inside a quoted value is not a comment: the split point is the first one after which the value parses."""
    reasons = {}
    for line in text.splitlines():
        key, eq, rest = line.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier() or "#" not in rest:
            continue
        for i in (i for i, ch in enumerate(rest) if ch == "#"):
            try:
                tomllib.loads(f"v = {rest[:i]}")
            except tomllib.TOMLDecodeError:
                continue
            reasons[key] = rest[i + 1:].strip()
            break
    return reasons


def presets_for_family(presets: list[Preset], family: str | None) -> list[Preset]:
    """The presets made for this base-model family; all of them while the family is unknown (no model yet, a hub
    id, an unreadable file), or when none was made for it."""
    fitting = [p for p in presets if family and p.family == family]
    return fitting or list(presets)


def list_presets(folder: Path = PRESETS_DIR) -> list[Preset]:
    """Every readable preset, by file name; a broken one is left out rather than breaking the page."""
    found = []
    for path in sorted(folder.glob("*.toml")):
        try:
            found.append(load_preset(path))
        except ConfigError:
            continue
    return found
