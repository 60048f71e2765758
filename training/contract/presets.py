"""A preset's ``[preset]`` table: what a presets/*.toml says about itself (name, description, model family, the
community loss band for the chart, the dataset size it is sized for), read here once for the UI's preset picker,
the CLI's family check, a run's ``preset.json`` and the Auto-caption panel's suggestion (``captioner = "tagger"``
or ``"captioner"``, optionally ``caption_model``: a hub id or a catalogue short name). The settings below the table
are ordinary config keys (``training.contract.config_io``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.captioners import DEFAULT_MODEL, KIND_REASONS, KINDS, known_model
from training.contract.config_io import ConfigError


def parse_band(value: Any) -> tuple[float, float] | None:
    """``loss_band = [lo, hi]`` as a tuple, or None when absent or malformed (no band beats a wrong one)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi else None


def parse_count_range(value: Any) -> tuple[int, int] | None:
    """``images_per_epoch = 100`` or ``[200, 400]`` as (low, high), or None when absent or malformed."""
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    return (values[0], values[-1]) if values[0] <= values[-1] else None


def parse_kind(value: Any) -> str:
    """``captioner = "tagger"`` or ``"captioner"``; anything else is no suggestion rather than a wrong one."""
    return value if value in KINDS else ""


@dataclass(frozen=True)
class PresetInfo:
    key: str                # the file's stem, e.g. "sd15-anime"
    name: str
    description: str = ""
    family: str = ""        # "sd1", "sd2", "sdxl", or "" when the preset does not say
    loss_band: tuple[float, float] | None = None
    images_per_epoch: tuple[int, int] | None = None  # the dataset size (images x repeats) the preset is sized for
    captioner: str = ""     # the caption kind the preset suggests: "tagger", "captioner", or "" when it does not say
    caption_model: str = ""  # the model it suggests for that kind, or "" for the catalogue's default

    @classmethod
    def from_table(cls, key: str, table: dict[str, Any]) -> PresetInfo:
        return cls(key=key, name=str(table.get("name") or key), description=str(table.get("description", "")),
                   family=str(table.get("family") or ""), loss_band=parse_band(table.get("loss_band")),
                   images_per_epoch=parse_count_range(table.get("images_per_epoch")),
                   captioner=parse_kind(table.get("captioner")), caption_model=str(table.get("caption_model") or ""))

    @classmethod
    def read(cls, path: Path) -> PresetInfo | None:
        """The file's ``[preset]`` table, or None without one; ConfigError (one line) for a file that is not TOML."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path.name}: not valid TOML: {err}") from None
        table = data.get("preset")
        return cls.from_table(path.stem, table) if isinstance(table, dict) else None

    def caption_suggestion(self) -> tuple[str, str, str] | None:
        """(kind, model, one-line reason) the Auto-caption panel follows, or None when the preset names no kind. A
        catalogue short name becomes its hub id; no model is the catalogue's default for the kind."""
        if not self.captioner:
            return None
        known = known_model(self.caption_model) if self.caption_model else None
        model = known.repo_id if known else (self.caption_model or DEFAULT_MODEL[self.captioner])
        return self.captioner, model, f"{self.name}: {KIND_REASONS[self.captioner]}"

    def record(self) -> dict[str, Any]:
        """What a run keeps of its preset (``preset.json``): enough to draw the band and check the family."""
        return {"key": self.key, "name": self.name, "family": self.family,
                "loss_band": list(self.loss_band) if self.loss_band else None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PresetInfo:
        return cls.from_table(str(record.get("key") or ""), record)


def preset_family(paths: list[Path]) -> tuple[str, str] | None:
    """(preset name, family) from the last of ``paths`` whose ``[preset]`` table names a family, else None."""
    found = None
    for path in paths:
        try:
            info = PresetInfo.read(path)
        except (OSError, UnicodeDecodeError, ConfigError):
            continue  # loading the config has already reported an unreadable file
        if info is not None and info.family:
            found = (info.name, info.family)
    return found
