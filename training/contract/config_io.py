"""TOML in and out for TrainConfig: flatten kohya-style sections, migrate, reject typos, save by section.

Torch-free (the UI uses it). Every problem becomes one ConfigError line that names the file, the key, the value and
what is allowed, e.g. ``run.toml: unknown key 'network_dims' (did you mean 'network_dim'?)``.
"""

from __future__ import annotations

import difflib
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import tomli_w
from pydantic import ValidationError

from training.contract.atomic import write_atomic
from training.contract.config import SCHEMA_VERSION, SECTIONS, TrainConfig, field_bounds, field_section
from training.contract.errors import UserError
from training.contract.kohya_keys import (
    BY_NAME,
    COMMAND_KEYS,
    IGNORED,
    MAPPED_TO,
    NOT_YET,
    RANDOM_SEED,
    REFUSED,
    SUPPORTED,
    KohyaKey,
    means_default,
    with_status,
)

# The kohya keys this trainer does not use, from the table of every sd-scripts option (training/contract/kohya_keys.py).
IGNORED_KOHYA_KEYS = {key.name: key.reason for key in with_status(IGNORED)}
UNSUPPORTED_KOHYA_KEYS = tuple(key.name for key in with_status(REFUSED))


class ConfigError(UserError):
    """A config file or value the user must fix."""


def flatten_sections(data: dict[str, Any], source: str) -> dict[str, Any]:
    """One level of [section] tables is for grouping only, as in kohya's config files."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for k, v in items:
            if isinstance(v, dict):
                raise ConfigError(f"{source}: [{key}.{k}] is nested too deep; sections hold plain keys only")
            if k in flat:
                raise ConfigError(f"{source}: key '{k}' is set twice")
            flat[k] = v
    return flat


def migrate(flat: dict[str, Any], source: str) -> dict[str, Any]:
    """Bring an older schema up to date; a file without schema_version (a kohya file) counts as current."""
    version = flat.pop("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(f"{source}: schema_version {version!r} is newer than this trainer knows "
                          f"({SCHEMA_VERSION}); update the trainer")
    flat.pop("preset", None)  # informational: which preset the values came from
    return flat


SET_FLAG = "--set"  # the command line's overrides, named in messages instead of a file


def set_text(key: str, value: Any) -> str:
    """An override as it was typed on the command line: ``--set key=value``."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{SET_FLAG} {key}={text}"


class Problems:
    """Every key of a config that cannot be used, gathered so one message names them all (a file with ten kohya
    keys to fix takes one round, not ten). Each problem names its origin unless it is the only file read."""

    def __init__(self, source: str, origins: Mapping[str, str] | None = None, order: list[str] | None = None) -> None:
        self.source = source
        self.origins = origins or {}
        self.order = order or []  # the keys as the file lists them: problems are told in that order
        self.items: list[tuple[str, str, str]] = []  # (key, origin, text)

    def origin(self, key: str) -> str:
        return self.origins.get(key, self.source)

    def add(self, key: str, text: str) -> None:
        self.items.append((key, self.origin(key), text))

    def raise_any(self) -> None:
        if not self.items:
            return
        position = {key: i for i, key in enumerate(self.order)}
        items = sorted(self.items, key=lambda item: position.get(item[0], len(position)))
        texts = [text if origin == SET_FLAG else f"{origin}: {text}" for _, origin, text in items]
        if len(texts) == 1:
            raise ConfigError(texts[0])
        raise ConfigError(f"{len(texts)} keys to fix: " + "; ".join(texts))


def where(key: str, value: Any, origin: str) -> str:
    """A key as its origin spells it: ``'xformers'`` in a file, ``--set xformers=true`` on the command line."""
    return set_text(key, value) if origin == SET_FLAG else f"'{key}'"


def suggestion(key: str) -> str:
    """A close known name, among our fields and the kohya keys a file may hold (refused ones are no advice)."""
    known = [*TrainConfig.model_fields, *(k.name for k in BY_NAME.values() if k.status != REFUSED)]
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def refusal(key: KohyaKey) -> str:
    if key.reason == NOT_YET:
        return "is a kohya option this trainer does not support yet; remove it"
    return f"is a kohya option this trainer does not support: {key.reason}; remove it"


def reject_unknown(flat: dict[str, Any], problems: Problems) -> list[str]:
    """Drop ignored kohya keys (returning notes about them), and refused ones set to sd-scripts' default (they ask
    for nothing); list unknown keys and refused ones that turn a feature on as problems."""
    notes, at_default = [], []
    for key in list(flat):
        if key in TrainConfig.model_fields:
            continue
        origin = problems.origin(key)
        named = where(key, flat[key], origin)
        kohya = BY_NAME.get(key)
        if kohya and kohya.status == IGNORED:
            notes.append(f"{origin}: {named} ignored: {kohya.reason}" if origin != SET_FLAG
                         else f"{named} ignored: {kohya.reason}")
            del flat[key]
        elif kohya and kohya.status == REFUSED and means_default(kohya, flat[key]):
            at_default.append(key)
            del flat[key]
        elif kohya and kohya.status == REFUSED:
            problems.add(key, f"{named} {refusal(kohya)}")
        elif origin == SET_FLAG:
            problems.add(key, f"{named}: unknown key{suggestion(key)}")
        else:
            problems.add(key, f"unknown key '{key}'{suggestion(key)}")
    if at_default:
        notes.append(f"{problems.source}: kohya keys left at sd-scripts' default, which asks for nothing here: "
                     + ", ".join(at_default))
    return notes


OPTIMIZERS_BY_LOWER = {name.lower(): name for name in get_args(TrainConfig.model_fields["optimizer_type"].annotation)}


def optional_text_fields() -> list[str]:
    """Fields whose unset value is None and that take text: sd-scripts tests these with ``if args.x:``, so an empty
    string (or false, as kohya_ss writes ``resume = false``) means unset."""
    return [name for name, field in TrainConfig.model_fields.items()
            if field.default is None and str in get_args(field.annotation)]


def read_as_sd_scripts(flat: dict[str, Any], problems: Problems) -> list[str]:
    """Values as sd-scripts reads them: old spellings and switches mapped to their key, optimizer names in any case,
    empty values meaning unset. Runs on every file: a value means the same in ours and in a kohya file."""
    notes = []
    for old, (new, switch_value) in MAPPED_TO.items():
        if old not in flat:
            continue
        value = flat.pop(old)
        if switch_value is not None:  # use_8bit_adam / use_lion_optimizer: a switch that picks the optimizer
            if not value:
                continue
            chosen = flat.get(new)
            if chosen and str(chosen).lower() != switch_value.lower():
                problems.add(old, f"'{old}' picks {new} = {switch_value!r} but {new} = {chosen!r} is also set; "
                                  "keep one")
                continue
            value = switch_value
        elif value in (None, ""):
            continue
        notes.append(f"{problems.origin(old)}: '{old}' read as {new} = {value!r}")
        flat[new] = value
    if flat.get("text_encoder_lr") == []:  # sd-scripts: an empty list is no rate of its own
        del flat["text_encoder_lr"]
    optimizer = flat.get("optimizer_type")
    if isinstance(optimizer, str):
        if optimizer == "":
            del flat["optimizer_type"]  # sd-scripts' "" is its default, AdamW
        else:
            flat["optimizer_type"] = OPTIMIZERS_BY_LOWER.get(optimizer.lower(), optimizer)
    for name in optional_text_fields():
        value = flat.get(name)
        if value is False or value == "" or value == []:
            del flat[name]
    save_as = flat.get("save_model_as")
    if save_as not in (None, "", "safetensors"):
        problems.add("save_model_as", f"save_model_as = {save_as!r}: LoRAs are saved as .safetensors only; remove it "
                                      "or set it to 'safetensors'")
        del flat["save_model_as"]
    for key in COMMAND_KEYS:
        flat.pop(key, None)
    return notes


def kohya_differences() -> dict[str, Any]:
    """The keys whose sd-scripts default differs from ours, with the value that default means here: what a kohya
    file that leaves them out asks for. The seed is the marker RANDOM_SEED (sd-scripts draws one)."""
    out = {}
    for key in with_status(SUPPORTED):
        ours = TrainConfig.model_fields[key.name].default
        if not key.keep and key.fill != ours:
            out[key.name] = key.fill
    return out


def fill_kohya_defaults(flat: dict[str, Any], source: str) -> list[str]:
    """Set the keys a kohya file leaves out to what they mean in sd-scripts, and say which."""
    taken = []
    for name, value in kohya_differences().items():
        if name in flat:
            continue
        if value == RANDOM_SEED:
            value = secrets.randbelow(2**32)
            taken.append(f"seed = {value} (sd-scripts draws a random seed; this one is written into the resolved "
                         "config)")
        else:
            taken.append(f"{name} = {toml_text(value)}")
        flat[name] = value
    if not taken:
        return []
    return [f"{source}: kohya file: sd-scripts' defaults taken for the keys it leaves out: " + ", ".join(taken)]


def toml_text(value: Any) -> str:
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def kohya_signs(doc: dict[str, Any], source: str) -> list[str]:
    """The keys that make a file a kohya file: sd-scripts options this trainer has no field for (xformers,
    save_model_as, ...), in a file without schema_version and without a [preset] table, which every file this
    trainer writes or ships carries. A file of our own field names only is read as ours."""
    if "schema_version" in doc or isinstance(doc.get("preset"), dict):
        return []
    flat = flatten_sections(doc, source)
    if "schema_version" in flat:
        return []
    return [key for key in flat if key in BY_NAME and BY_NAME[key].status != SUPPORTED]


def allowed_values(name: str) -> str:
    """Human description of what a field accepts, from its type and limits: ``one of ...`` or its bounds."""
    choices = getattr(TrainConfig.model_fields[name].annotation, "__args__", None)
    if choices and all(isinstance(c, str) for c in choices):
        return "one of " + ", ".join(choices)
    bounds = field_bounds(name)
    return bounds.text() if bounds else ""


# pydantic's error kinds that mean "this is not a number at all", whatever the bounds say
NOT_A_NUMBER = {"finite_number": "not a number", "float_parsing": "not a number", "int_parsing": "not a whole number",
                "float_type": "not a number", "int_type": "not a whole number"}


def error_text(error: Mapping[str, Any]) -> str:
    if error["type"] == "literal_error":
        return "not a known choice"
    return NOT_A_NUMBER.get(error["type"]) or error["msg"].removeprefix("Value error, ")


def validation_message(err: ValidationError, flat: dict[str, Any], source: str,
                       origins: Mapping[str, str] | None = None) -> str:
    errors = err.errors()
    # A NaN offered to a field that also takes a list fails both ways; the number's complaint is the one to show.
    first = next((e for e in errors if e["type"] in NOT_A_NUMBER), errors[0])
    key = str(first["loc"][0]) if first["loc"] else ""
    msg = error_text(first)
    if not key:
        return f"{source}: {msg}"
    allowed = allowed_values(key) if key in TrainConfig.model_fields else ""
    allowed = f" (allowed: {allowed})" if allowed else ""
    value = flat.get(key, first.get("input"))
    origin = (origins or {}).get(key, source)
    if origin == SET_FLAG:
        return f"{set_text(key, value)}: {msg}{allowed}"
    return f"{origin}: {key} = {value!r} is invalid: {msg}{allowed}"


def config_from_dict(flat: dict[str, Any], source: str = "config", origins: Mapping[str, str] | None = None,
                     kohya: bool = False) -> tuple[TrainConfig, list[str]]:
    """Validate a flat (or sectioned) dict; returns the config and notes about ignored keys and defaults taken.
    Messages name ``source``, or for a key listed in ``origins`` the file (or --set) it came from. ``kohya`` fills
    the keys the dict leaves out with sd-scripts' defaults instead of ours."""
    flat = migrate(flatten_sections(dict(flat), source), source)
    problems = Problems(source, origins, order=list(flat))
    notes = read_as_sd_scripts(flat, problems)
    notes += reject_unknown(flat, problems)
    problems.raise_any()
    if kohya:
        notes += fill_kohya_defaults(flat, source)
    try:
        config = TrainConfig.model_validate(flat)
    except ValidationError as err:
        raise ConfigError(validation_message(err, flat, source, origins)) from None
    return config, notes + [f"{source}: {note}" for note in config.network.notes]


def parse_toml(path: Path) -> dict[str, Any]:
    """One TOML file as it is written, sections and all."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        hint = " (Windows paths: write C:/path or 'C:\\path' in single quotes)" if "escape" in str(err) else ""
        raise ConfigError(f"{path.name}: not valid TOML: {err}{hint}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """One TOML file as a flat dict. A ``[preset]`` table (name, description, loss band: for the UI) is set aside."""
    data = parse_toml(path)
    if isinstance(data.get("preset"), dict):
        del data["preset"]
    return flatten_sections(data, path.name)


def kohya_mode_note(signs: dict[str, list[str]]) -> str:
    found = "; ".join(f"{name}: {', '.join(repr(k) for k in keys[:3])}" for name, keys in signs.items() if keys)
    return (f"read as a kohya file (no schema_version, and sd-scripts keys this trainer has no setting for: {found}); "
            "--no-kohya reads it with this trainer's defaults")


def load_config(path: Path | list[Path], overrides: dict[str, Any] | None = None,
                kohya: bool | None = None) -> tuple[TrainConfig, list[str]]:
    """Read TOML files (kohya's or ours; later files override earlier ones, e.g. a preset then a run) and
    ``overrides`` (the command line's --set) into one validated TrainConfig. A message about a value names where
    that value came from: its file, or --set.

    ``kohya``: True fills every key no file sets with sd-scripts' default (a kohya file means what it means in
    sd-scripts), False with ours, None decides from the files (kohya_signs)."""
    paths = path if isinstance(path, list) else [path]
    flat: dict[str, Any] = {}
    origins: dict[str, str] = {}
    signs: dict[str, list[str]] = {}
    for p in paths:
        doc = parse_toml(p)
        signs[p.name] = kohya_signs(doc, p.name)
        if isinstance(doc.get("preset"), dict):
            del doc["preset"]
        data = flatten_sections(doc, p.name)
        flat.update(data)
        origins.update(dict.fromkeys(data, p.name))
    flat.update(overrides or {})
    origins.update(dict.fromkeys(overrides or {}, SET_FLAG))
    detected = any(signs.values())
    cfg, notes = config_from_dict(flat, "+".join(p.name for p in paths), origins,
                                  kohya=detected if kohya is None else kohya)
    if kohya is None and detected:
        notes.insert(0, kohya_mode_note(signs))
    return cfg, notes


def wants_output_config(paths: list[Path], overrides: dict[str, Any] | None = None) -> bool:
    """Whether a file (or --set) says ``output_config = true``: sd-scripts' "write the resolved config and exit"."""
    values = [read_toml(p).get("output_config") for p in paths] + [(overrides or {}).get("output_config")]
    return bool(next((v for v in reversed(values) if v is not None), False))


def config_to_toml(cfg: TrainConfig, preset: str | None = None) -> str:
    """The resolved config grouped by section; unset optionals are left out (TOML has no null)."""
    top: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if preset:
        top["preset"] = preset
    sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for name, value in cfg.model_dump().items():
        if value is not None:
            sections[field_section(name)][name] = value
    return tomli_w.dumps(top | {s: v for s, v in sections.items() if v})


def save_config(cfg: TrainConfig, path: Path, preset: str | None = None) -> None:
    write_atomic(path, config_to_toml(cfg, preset))
