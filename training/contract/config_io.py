"""TOML in and out for TrainConfig: flatten kohya-style sections, migrate, reject typos, save by section.

Torch-free (the UI uses it). Every problem becomes one ConfigError line that names the file, the key, the value and
what is allowed, e.g. ``run.toml: unknown key 'network_dims' (did you mean 'network_dim'?)``.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from training.contract.atomic import write_atomic
from training.contract.config import SCHEMA_VERSION, SECTIONS, TrainConfig, field_bounds, field_section
from training.contract.errors import UserError

# kohya options that mean nothing here: accepted so kohya users' files work, mentioned once, ignored.
IGNORED_KOHYA_KEYS = {
    "xformers": "attention always uses PyTorch SDPA",
    "sdpa": "attention always uses PyTorch SDPA",
    "mem_eff_attn": "attention always uses PyTorch SDPA",
    "bucket_no_upscale": "buckets never upscale images",
    "persistent_data_loader_workers": "loader workers are managed automatically",
    "save_model_as": "LoRAs are always saved as .safetensors",
    "lowram": "not needed",
    "max_token_length": "captions use the standard 75-token window",
    "log_with": "events.jsonl is always written; TensorBoard when installed",
    "pretrained_model_name_or_path_hash": "not needed",
    "sdxl": "the model family is read from the checkpoint",
    "no_half_vae": "the VAE always runs in float32 unless it declares itself fp16-safe",
    "cache_text_encoder_outputs_to_disk": "caption embeddings are cached in memory (they are small)",
}

# kohya options for features this trainer does not have (yet): refused, so nobody trains without what they asked.
UNSUPPORTED_KOHYA_KEYS = (
    "reg_data_dir", "color_aug", "random_crop", "face_crop_aug_range",
    "full_fp16", "multires_noise_iterations", "multires_noise_discount",
    "adaptive_noise_scale", "zero_terminal_snr", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
    "dataset_config", "in_json", "optimizer_args", "lr_scheduler_power", "prior_loss_weight", "huber_c",
    "loss_type", "ip_noise_gamma", "debiased_estimation_loss", "masked_loss",
)


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


def reject_unknown(flat: dict[str, Any], source: str, origins: Mapping[str, str] | None = None) -> list[str]:
    """Drop ignored kohya keys (returning notes about them); refuse unknown or unsupported ones. ``origins`` says
    which file (or --set) each key came from, when they came from several."""
    notes = []
    for key in list(flat):
        if key in TrainConfig.model_fields:
            continue
        origin = (origins or {}).get(key, source)
        where = set_text(key, flat[key]) if origin == SET_FLAG else f"{origin}: '{key}'"
        if key in IGNORED_KOHYA_KEYS:
            notes.append(f"{where} ignored: {IGNORED_KOHYA_KEYS[key]}")
            del flat[key]
        elif key in UNSUPPORTED_KOHYA_KEYS:
            raise ConfigError(f"{where} is a kohya option this trainer does not support yet; remove it")
        else:
            close = difflib.get_close_matches(key, TrainConfig.model_fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key{hint}" if origin == SET_FLAG
                              else f"{origin}: unknown key '{key}'{hint}")
    return notes


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


def config_from_dict(flat: dict[str, Any], source: str = "config",
                     origins: Mapping[str, str] | None = None) -> tuple[TrainConfig, list[str]]:
    """Validate a flat (or sectioned) dict; returns the config and notes about ignored keys. Messages name
    ``source``, or for a key listed in ``origins`` the file (or --set) it came from."""
    flat = migrate(flatten_sections(dict(flat), source), source)
    notes = reject_unknown(flat, source, origins)
    try:
        config = TrainConfig.model_validate(flat)
    except ValidationError as err:
        raise ConfigError(validation_message(err, flat, source, origins)) from None
    return config, notes + [f"{source}: {note}" for note in config.network.notes]


def read_toml(path: Path) -> dict[str, Any]:
    """One TOML file as a flat dict. A ``[preset]`` table (name, description, loss band: for the UI) is set aside."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        hint = " (Windows paths: write C:/path or 'C:\\path' in single quotes)" if "escape" in str(err) else ""
        raise ConfigError(f"{path.name}: not valid TOML: {err}{hint}") from None
    if isinstance(data.get("preset"), dict):
        del data["preset"]
    return flatten_sections(data, path.name)


def load_config(path: Path | list[Path], overrides: dict[str, Any] | None = None) -> tuple[TrainConfig, list[str]]:
    """Read TOML files (kohya's or ours; later files override earlier ones, e.g. a preset then a run) and
    ``overrides`` (the command line's --set) into one validated TrainConfig. A message about a value names where
    that value came from: its file, or --set."""
    paths = path if isinstance(path, list) else [path]
    flat: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for p in paths:
        data = read_toml(p)
        flat.update(data)
        origins.update(dict.fromkeys(data, p.name))
    flat.update(overrides or {})
    origins.update(dict.fromkeys(overrides or {}, SET_FLAG))
    return config_from_dict(flat, "+".join(p.name for p in paths), origins)


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
