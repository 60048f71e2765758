"""Which family a base model is, read from its header or folder without torch, and whether it fits the preset.

Shown next to the model path on the Model tab and checked again on Start, so a wrong pick is a message in a second,
not a failed run a minute later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.errors import UserError
from training.preflight import looks_like_path

FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
SUPPORTED = ("sd1", "sd2")


def detect_model_family(model: str) -> tuple[str | None, str]:
    """(family, one line for the user). Family is None when the path is empty, missing, unreadable or a hub id
    (a hub id is resolved by the trainer; this check never goes online)."""
    from training.models.detect import detect_family  # torch-free, but only needed once a path is typed

    model = (model or "").strip()
    if not model:
        return None, "No base model yet: give a .safetensors/.ckpt file or a diffusers folder."
    if not looks_like_path(model):
        return None, f"{model}: a hub id; the trainer downloads it when online (its family is checked then)."
    path = Path(model).expanduser()
    if not path.exists():
        return None, f"{path} does not exist."
    try:
        family = detect_family(path)
    except UserError as err:
        return None, str(err)
    if family not in SUPPORTED:
        return family, f"Detected **{FAMILY_NAMES[family]}**: not supported by this version (SD1.x and SD2.x only)."
    return family, f"Detected **{FAMILY_NAMES[family]}** base model."


def family_problem(model: str, preset: dict[str, Any] | None) -> str | None:
    """A one-line reason not to start with this model and preset, or None. Unknown families pass: the trainer
    gives the final word."""
    family, _ = detect_model_family(model)
    if family is None:
        return None
    if family not in SUPPORTED:
        return (f"{model} is an {FAMILY_NAMES[family]} model; this version trains SD1.x and SD2.x only. "
                "Pick an SD1.5 or SD2 base model")
    wanted = (preset or {}).get("family")
    if wanted in FAMILY_NAMES and wanted != family:
        return (f"the preset '{preset.get('name', wanted)}' is for {FAMILY_NAMES[wanted]} models but {model} is "
                f"{FAMILY_NAMES[family]}; pick a {FAMILY_NAMES[family]} preset or another base model")
    return None
