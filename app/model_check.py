"""Which family a base model is, read from its header or folder without torch, and whether it fits the preset.

Shown next to the model path on the Model tab and checked again on Start, so a wrong pick is a message in a second,
not a failed run a minute later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.contract.errors import UserError
from training.contract.services import FAMILY_LABELS, looks_like_path
from training.contract.services import preset_mismatch as training_preset_mismatch

FAMILY_NAMES = FAMILY_LABELS
SUPPORTED = ("sd1", "sd2", "sdxl")
# What the family line adds for SDXL: the two things SDXL users ask about first.
FAMILY_NOTES = {"sdxl": " Trains at 1024 px; clip_skip 1 and 2 are the same here (SDXL always uses the penultimate "
                        "layer)."}
# The clip_skip tooltip once the base model is known to be SDXL (the field stays editable: 3+ still means something).
CLIP_SKIP_SDXL = ("SDXL always conditions on the penultimate layer of both text encoders, so 1 and 2 are the same "
                  "(an anime base's 'clip skip 2' changes nothing); 3 or more takes an earlier layer. Leave it at 1.")


def family_name(family: str | None) -> str:
    return FAMILY_NAMES.get(family or "", family or "unknown")


def detect_model_family(model: str) -> tuple[str | None, str]:
    """(family, one line for the user). Family is None when the path is empty, missing, unreadable or a hub id
    (a hub id is resolved by the trainer; this check never goes online)."""
    from training.contract.services import detect_family  # only needed once a path is typed

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
        return family, f"Detected **{family_name(family)}**: not supported by this version ({supported_names()} only)."
    return family, f"Detected **{family_name(family)}** base model.{FAMILY_NOTES.get(family, '')}"


def supported_names() -> str:
    return ", ".join(FAMILY_NAMES[f] for f in SUPPORTED)


def family_problem(model: str, preset: dict[str, Any] | None) -> str | None:
    """A one-line reason not to start with this model and preset, or None. Unknown families pass: the trainer
    gives the final word."""
    family, _ = detect_model_family(model)
    if family is None:
        return None
    if family not in SUPPORTED:
        return (f"{model} is an {family_name(family)} model; this version trains {supported_names()} only. "
                "Pick another base model")
    return preset_mismatch(family, model, preset)


def preset_mismatch(family: str, model: str, preset: dict[str, Any] | None) -> str | None:
    """The trainer's own check (the command line refuses the same preset with the same line)."""
    preset = preset or {}
    wanted = preset.get("family")
    return training_preset_mismatch(family, model, str(preset.get("name", wanted)), wanted)


def model_problem(model: str) -> str | None:
    """Why Start must refuse this base model, or None: a file that exists but that the family check cannot read
    (not a .safetensors/.ckpt, a broken header). The line under the model path already says so; a run started
    anyway would fail later, after loading. A missing path is the preflight's to report (a dry run needs none)."""
    from training.contract.services import detect_family

    model = (model or "").strip()
    if not model or not looks_like_path(model):
        return None
    path = Path(model).expanduser()
    if not path.exists():
        return None
    try:
        detect_family(path)
    except UserError as err:
        return str(err)
    return None
