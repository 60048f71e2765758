"""The config form: one Gradio component per TrainConfig field, built from the model itself.

A registry (not hand-written components) keeps the form, Save/Load TOML and Start in the same order and the same
names as the CLI: label = the field's title ("Learning rate", the TOML key in small print beside it), tooltip = its
description, limits = its pydantic limits. Handlers get and return plain ``{field name: UI value}`` dicts; the
conversions to and from TrainConfig, the per-field checks (``form_problems``) and the saved form live here only.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from app.model_check import model_problem
from training.contract.atomic import write_atomic
from training.contract.config import SECTIONS, Bounds, TrainConfig, field_bounds, field_section, field_title
from training.contract.config_io import ConfigError, allowed_values, config_from_dict, read_toml
from training.contract.layout import RunLayout
from training.contract.presets import PresetInfo
from training.contract.services import FAMILY_LABELS, lora_size, total_steps, trained_parts

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
# What the user brings, not what a preset chooses: picking a preset never overwrites these. (v_parameterization is
# not here: a 768-v preset sets it, because the weights do not reveal it.)
USER_FIELDS = frozenset({"pretrained_model_name_or_path", "v2", "vae", "train_data_dir", "reg_data_dir",
                         "dataset_config", "caption_extension", "network_weights", "sample_prompts", "output_dir",
                         "output_name", "resume", "logging_dir"})
AUTO = "auto"  # tri-state booleans (v2, v_parameterization): unset means "detect from the checkpoint"
TRISTATE = {AUTO: None, "true": True, "false": False}
UNSET = "unset (auto)"  # the placeholder of an optional number: an empty box means the config's own choice
# Arrow-key steps of the float fields that need a finer one than the default: a learning-rate arrow press must move
# 0.0001 to 0.00011, not to 1. Integers step by 1.
FLOAT_STEPS = {"learning_rate": 1e-5, "network_alpha": 1.0, "network_dropout": 0.05, "caption_dropout_rate": 0.05,
               "validation_split": 0.05, "lr_warmup_steps": 0.01, "max_grad_norm": 0.1, "noise_offset": 0.01}
DEFAULT_FLOAT_STEP = 0.01
FORM_FILE = "ui-form.json"  # the form as last edited, in the data folder: survives a reload and a restart


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
    label: str = ""  # for people: "Learning rate"; the name stays the key ("learning_rate")
    step: float | None = None  # number: the arrow keys' step

    @property
    def free_number(self) -> bool:
        """An optional number: a text box, so that empty stays unset (a number box turns empty into 0)."""
        return self.kind == "number" and self.optional


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
        common = {"name": name, "section": field_section(name), "optional": optional, "info": tip or "",
                  "label": field_title(name)}
        if typing.get_origin(inner) is Literal:
            specs.append(FieldSpec(kind="choice", choices=typing.get_args(inner), **common))
        elif inner is bool:
            specs.append(FieldSpec(kind="tristate" if optional else "checkbox", **common))
        elif inner in (int, float):
            step = 1 if inner is int else FLOAT_STEPS.get(name, DEFAULT_FLOAT_STEP)
            specs.append(FieldSpec(kind="number", integer=inner is int, bounds=bounds, step=step, **common))
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

    common = {"label": spec.label, "info": spec.info, "value": value, "elem_id": f"cfg-{spec.name}", "render": False}
    if spec.kind == "choice":
        return gr.Dropdown(choices=list(spec.choices), **common)
    if spec.kind == "tristate":
        return gr.Dropdown(choices=list(TRISTATE), **common)
    if spec.kind == "checkbox":
        return gr.Checkbox(**common)
    if spec.free_number:
        return gr.Textbox(max_lines=1, placeholder=UNSET, **common)
    if spec.kind == "number":
        # Limits are checked by form_problems, not gr.Number(minimum=...): Gradio's own range error does not name
        # the field, while ours says "learning_rate must be > 0 and ≤ 10; you gave -1" beside it.
        return gr.Number(precision=0 if spec.integer else None, step=spec.step, **common)
    return gr.Textbox(max_lines=1, **common)


def key_css(specs: list[FieldSpec]) -> str:
    """CSS that prints each field's config key in small monospace beside its label (Gradio labels are plain text):
    the friendly label for reading, the key for TOML files, the CLI and kohya's documentation."""
    rules = []
    for spec in specs:
        label = ".label-text" if spec.kind == "checkbox" else '[data-testid="block-info"]'
        rules.append(f'#cfg-{spec.name} {label}::after {{ content: "{spec.name}"; }}')
    return "\n".join(rules)


def _to_config_value(spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "tristate":
        return TRISTATE.get(str(value), value)
    if spec.kind == "text" and isinstance(value, str):
        value = value.strip()
        return None if spec.optional and not value else value
    if spec.kind == "number":
        number, _problem = parse_number(spec, value)
        return number
    return value


def _given(spec: FieldSpec, value: Any) -> bool:
    """None for a field that cannot be unset means no value came (a field not on this page, an API call that left
    it out): the config's default applies. An empty number box is given, and its check says it is empty."""
    return value is not None or spec.optional or spec.kind == "number"


def range_words(bounds: Bounds | None) -> str:
    """``> 0 and ≤ 10``, ``≥ 1``: a field's limits as a sentence says them."""
    if bounds is None:
        return ""
    low = f"{'≥' if bounds.low_inclusive else '>'} {bounds.low:g}" if bounds.low is not None else ""
    high = f"{'≤' if bounds.high_inclusive else '<'} {bounds.high:g}" if bounds.high is not None else ""
    return " and ".join(p for p in (low, high) if p)


def parse_number(spec: FieldSpec, value: Any) -> tuple[int | float | None, str | None]:
    """(number, None), or (None, a one-line message naming the field and what it allows). Empty is unset for an
    optional field; text is parsed, because an optional number is a text box."""
    allowed = range_words(spec.bounds)
    wanted = f"a {'whole number' if spec.integer else 'number'}" + (f" {allowed}" if allowed else "")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None if spec.optional else f"{spec.name} is empty: give {wanted}"
    if isinstance(value, bool):
        return None, f"{spec.name}: {value!r} is not a number; give {wanted}"
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None, f"{spec.name}: {str(value).strip()!r} is not a number; give {wanted}"
    if not math.isfinite(number):
        return None, f"{spec.name}: {str(value).strip()!r} is not a number; give {wanted}"
    if spec.integer and not number.is_integer():
        return None, f"{spec.name} must be a whole number; you gave {number:g}"
    if spec.bounds and not _within(spec.bounds, number):
        return None, f"{spec.name} must be {allowed}; you gave {number:g}"
    return (int(number) if spec.integer else number), None


def _within(bounds: Bounds, number: float) -> bool:
    if bounds.low is not None and (number < bounds.low or (number == bounds.low and not bounds.low_inclusive)):
        return False
    return bounds.high is None or number < bounds.high or (number == bounds.high and bounds.high_inclusive)


def form_problems(values: dict[str, Any]) -> dict[str, str]:
    """{field name: one line} for every field the form would not start with; {} when it may start. The same checks
    show beside the fields as the user types and refuse Start: each number against its limits, every value against
    the config, and a base-model file that exists but cannot be read."""
    specs = {s.name: s for s in field_specs()}
    problems: dict[str, str] = {}
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if name not in specs or not _given(specs[name], value):
            continue
        if specs[name].kind == "number":
            number, problem = parse_number(specs[name], value)
            if problem:
                problems[name] = problem
                continue
            flat[name] = number
        else:
            flat[name] = _to_config_value(specs[name], value)
    problems |= {k: v for k, v in _config_problems(flat).items() if k not in problems}
    model = model_problem(str(flat.get("pretrained_model_name_or_path") or ""))
    if model:
        problems["pretrained_model_name_or_path"] = model
    order = [*specs, *problems]  # form order: Start names the first field on the page that needs fixing
    return {name: problems[name] for name in dict.fromkeys(order) if name in problems}


def first_problem(values: dict[str, Any]) -> str | None:
    """The first of form_problems, in form order: what Start says when it refuses."""
    return next(iter(form_problems(values).values()), None)


def _config_problems(flat: dict[str, Any]) -> dict[str, str]:
    """Every field the config refuses (pydantic lists all of them), each as 'key = value is invalid: why'."""
    try:
        TrainConfig.model_validate(flat)
    except ValidationError as err:
        found: dict[str, str] = {}
        for item in err.errors():
            key = str(item["loc"][0]) if item["loc"] else _named_field(item["msg"])
            why = item["msg"].removeprefix("Value error, ")
            msg = "not a known choice" if item["type"] == "literal_error" else why
            if key not in TrainConfig.model_fields:  # a rule about the whole config that names no field
                found.setdefault(key, msg)
                continue
            allowed = allowed_values(key)
            text = f"{key} = {flat.get(key)!r} is invalid: {msg}" + (f" (allowed: {allowed})" if allowed else "")
            found.setdefault(key, text)
        return found
    return {}


def _named_field(message: str) -> str:
    """The field a whole-config message names first (min_bucket_reso > max_bucket_reso; "network_args 'algo' needs
    network_module = ...": the arg typed, not the module it asks for), to show it there."""
    found = {m.start(): name for name in TrainConfig.model_fields
             for m in [re.search(rf"\b{re.escape(name)}\b", message)] if m}
    return found[min(found)] if found else "form"


def _to_ui_value(spec: FieldSpec, value: Any) -> Any:
    if spec.kind == "tristate":
        return next(k for k, v in TRISTATE.items() if v == value)
    if spec.free_number:
        return "" if value is None else str(value)
    if spec.kind == "text" and value is None:
        return ""
    if spec.kind == "text" and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return shlex.join(value)  # network_args: "algo=loha preset=full", as kohya's GUI shows them
    if spec.kind == "text" and isinstance(value, list | tuple):  # text_encoder_lr's pair: "1e-05, 5e-06"
        return ", ".join(str(v) for v in value)
    if spec.kind == "text" and not isinstance(value, str):
        return str(value)
    return value


def values_to_config(values: dict[str, Any]) -> tuple[TrainConfig | None, str | None]:
    """Form values -> (config, None), or (None, one-line message naming the key). Never raises for bad input."""
    specs = {s.name: s for s in field_specs()}
    for name, value in values.items():  # a number's own message says its range and what was given
        if name in specs and specs[name].kind == "number" and (problem := parse_number(specs[name], value)[1]):
            return None, problem
    flat = {k: _to_config_value(specs[k], v) if k in specs else v for k, v in values.items()
            if k not in specs or _given(specs[k], v)}
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


def loaded_values(cfg: TrainConfig) -> dict[str, Any]:
    """Form values from a loaded file. A run's job.toml names the run folder the UI chose as output_dir; kept, a
    later Save TOML would send a terminal run into that old folder, so the field is left empty instead."""
    values = config_to_values(cfg)
    if cfg.output_dir and RunLayout(Path(cfg.output_dir)).is_run():
        values["output_dir"] = ""
    return values


def save_form(data_dir: Path, values: dict[str, Any], preset: str | None, record: dict[str, Any] | None) -> None:
    """Keep the form as the user left it, with the preset picked and the one applied, for the next page load."""
    state = {"values": values, "preset": preset, "preset_record": record}
    write_atomic(data_dir / FORM_FILE, json.dumps(state, indent=1, sort_keys=True, default=str))


def load_form(data_dir: Path) -> tuple[dict[str, Any], str | None, dict[str, Any] | None]:
    """(values, preset key, preset record) saved by save_form. A value that does not fit its field now (the file
    is damaged, or the field changed kind) is left out: the field keeps its default. A missing or damaged file is
    an empty form, never an error: the saved form is a convenience."""
    try:
        state = json.loads((data_dir / FORM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, None, None
    if not isinstance(state, dict):
        return {}, None, None
    saved = state.get("values") if isinstance(state.get("values"), dict) else {}
    values = {s.name: saved[s.name] for s in field_specs() if s.name in saved and fits(s, saved[s.name])}
    preset = state.get("preset") if isinstance(state.get("preset"), str) else None
    record = state.get("preset_record") if isinstance(state.get("preset_record"), dict) else None
    return values, preset, record


def fits(spec: FieldSpec, value: Any) -> bool:
    """Whether a saved value can go back into the field's component (its check may still find it invalid)."""
    if spec.kind == "choice":
        return value in spec.choices
    if spec.kind == "tristate":
        return value in TRISTATE
    if spec.kind == "checkbox":
        return isinstance(value, bool)
    if spec.kind == "number" and not spec.optional:
        return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    return isinstance(value, str)


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


NO_CUDA = "No CUDA GPU"  # how app.device's line starts on a machine without one (CPU only, or Apple MPS)
EIGHT_BIT = ("AdamW8bit", "Lion")  # the optimizers that come from bitsandbytes (training/run/optim.py)


def cpu_fallback_note(optimizer: str | None, precision: str | None, device_line: str,
                      has_bitsandbytes: bool) -> str:
    """What a run of these settings uses on a machine without a CUDA GPU, where that differs from what the form
    asks, as the trainer does it: mixed precision becomes float32 (it warns ``no_gpu`` at start), and the 8-bit
    optimizers run on the CPU through bitsandbytes, or stop the run when it is not installed. Empty with a GPU or
    while the device check has not answered."""
    if not device_line.startswith(NO_CUDA):
        return ""
    notes = []
    if precision in ("bf16", "fp16"):
        notes.append(f"mixed_precision {precision} needs a CUDA GPU, so the trainer trains in float32 instead "
                     "(slower and more memory; fine for a check run)")
    if optimizer in EIGHT_BIT and has_bitsandbytes:
        notes.append(f"optimizer {optimizer} is used as chosen: the installed bitsandbytes runs it on the CPU")
    elif optimizer in EIGHT_BIT:
        notes.append(f"optimizer {optimizer} needs the bitsandbytes package, which is not installed: the run would "
                     "stop when it builds the optimizer; choose AdamW, or install the optim extra")
    if not notes:
        return ""
    return "**No CUDA GPU here:** " + "; ".join(notes) + "."


def bitsandbytes_installed() -> bool:
    """Whether the trainer (same Python) can import bitsandbytes; found without importing it (it imports torch)."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None
