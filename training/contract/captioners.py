"""The caption models LoRA Forge knows by name, and the ones already on this computer, torch-free.

The catalogue is what the Auto-caption panel offers in its model list (and what ``python -m training.caption``
accepts by short name, e.g. ``--tagger wd-vit-tagger-v3``). Folders under ``<data dir>/models/taggers/`` and
``<data dir>/models/captioners/`` holding a model are listed before it, because a folder works offline and a hub id
needs the internet once. Whether a hub id is already in the Hugging Face cache is read from the cache's folder
layout, so the UI needs no hub client to say so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["tagger", "captioner"]
KINDS: tuple[Kind, ...] = ("tagger", "captioner")
TAGGER_FILES = ("model.onnx", "selected_tags.csv")  # a WD14 tagger folder (training/caption/tagger.py, tags.py)
CAPTIONER_FILE = "config.json"  # a transformers model folder
MODELS_DIR = Path("models")  # under the data dir: taggers/ and captioners/ hold the user's own model folders
LOCAL_DIRS: dict[Kind, str] = {"tagger": "taggers", "captioner": "captioners"}
FLORENCE_TASK = "<DETAILED_CAPTION>"
CHAT_PROMPT = "Describe this image in one detailed sentence, as a caption for training an image model."
# Why a preset suggests its kind: shown with the preset's name when the panel follows it.
KIND_REASONS: dict[Kind, str] = {
    "tagger": "booru tags suit anime bases, whose text encoders learned from them",
    "captioner": "natural sentences suit photoreal bases, trained on alt-text-like captions",
}


@dataclass(frozen=True)
class CaptionModel:
    """One known model: its hub id, kind, what it is for, its rough download size, and the prompt it gets when the
    user leaves the prompt empty ("" for models that take none)."""

    repo_id: str
    kind: Kind
    description: str
    size: str
    prompt: str = ""

    @property
    def short_name(self) -> str:
        return self.repo_id.split("/", 1)[1]


CATALOGUE: tuple[CaptionModel, ...] = (
    CaptionModel("SmilingWolf/wd-vit-tagger-v3", "tagger", "WD14 ViT v3: quick, good general booru tags",
                 "about 380 MB"),
    CaptionModel("SmilingWolf/wd-swinv2-tagger-v3", "tagger", "WD14 SwinV2 v3: a little more accurate, slower",
                 "about 470 MB"),
    CaptionModel("SmilingWolf/wd-convnext-tagger-v3", "tagger", "WD14 ConvNeXt v3: between ViT and SwinV2",
                 "about 400 MB"),
    CaptionModel("SmilingWolf/wd-eva02-large-tagger-v3", "tagger", "WD14 EVA02-Large v3: the most accurate, "
                 "slowest", "about 1.3 GB"),
    CaptionModel("SmilingWolf/wd-v1-4-moat-tagger-v2", "tagger", "WD14 MOAT v2: the older v2 tag set",
                 "about 330 MB"),
    CaptionModel("florence-community/Florence-2-base", "captioner", "Florence-2 base (transformers' native "
                 "format): detailed captions, light", "about 1.1 GB", FLORENCE_TASK),
    CaptionModel("florence-community/Florence-2-large", "captioner", "Florence-2 large (transformers' native "
                 "format): more detailed captions", "about 3.3 GB", FLORENCE_TASK),
    CaptionModel("Salesforce/blip-image-captioning-base", "captioner", "BLIP base: short plain captions",
                 "about 1 GB"),
    CaptionModel("Salesforce/blip-image-captioning-large", "captioner", "BLIP large: short plain captions, "
                 "a little better", "about 1.9 GB"),
    CaptionModel("Qwen/Qwen2.5-VL-3B-Instruct", "captioner", "Qwen2.5-VL 3B chat model: long, precise "
                 "sentences; wants a GPU", "about 7.5 GB", CHAT_PROMPT),
)
DEFAULT_MODEL: dict[Kind, str] = {"tagger": "SmilingWolf/wd-vit-tagger-v3",
                                  "captioner": "florence-community/Florence-2-base"}


def catalogue(kind: str) -> list[CaptionModel]:
    return [m for m in CATALOGUE if m.kind == kind]


def known_model(spec: str) -> CaptionModel | None:
    """The catalogue entry ``spec`` names, by hub id or by short name (``wd-vit-tagger-v3``), any case."""
    wanted = spec.strip().lower()
    return next((m for m in CATALOGUE if wanted in (m.repo_id.lower(), m.short_name.lower())), None)


def folder_kind(folder: Path) -> Kind | None:
    """What a folder holds: a WD14 tagger, a transformers model, or neither (None)."""
    if all((folder / name).is_file() for name in TAGGER_FILES):
        return "tagger"
    if (folder / CAPTIONER_FILE).is_file():
        return "captioner"
    return None


@dataclass(frozen=True)
class LocalModel:
    path: Path
    kind: Kind

    @property
    def label(self) -> str:
        return f"local: {self.path.name}"


def local_models(data_dir: Path, kind: str | None = None) -> list[LocalModel]:
    """Model folders the user put under ``<data dir>/models/taggers/`` or ``captioners/``, by name; each counted by
    what it holds, not by where it lies. An unreadable folder is left out."""
    found = []
    for sub in LOCAL_DIRS.values():
        parent = Path(data_dir) / MODELS_DIR / sub
        try:
            folders = sorted(p for p in parent.iterdir() if p.is_dir())
        except OSError:
            continue
        for folder in folders:
            held = folder_kind(folder)
            if held is not None and (kind is None or held == kind):
                found.append(LocalModel(folder, held))
    return found


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it: the caption child inherits this process's environment."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: HF_HUB_CACHE, else HF_HOME/hub, else the user cache folder."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "hub"


def hub_cached(repo_id: str, kind: str) -> bool:
    """Whether a snapshot of ``repo_id`` in the cache holds the model file of its kind (a tagger's model.onnx, a
    captioner's config.json): then it loads offline."""
    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    needed = TAGGER_FILES[0] if kind == "tagger" else CAPTIONER_FILE
    try:
        return any((snap / needed).is_file() for snap in snapshots.iterdir())
    except OSError:
        return False


def local_dir(data_dir: Path, kind: str) -> Path:
    """The folder whose model folders the UI lists for ``kind``."""
    return Path(data_dir) / MODELS_DIR / LOCAL_DIRS.get(kind, "captioners")  # type: ignore[arg-type]


def availability(model: CaptionModel, data_dir: Path) -> str:
    """One line: whether the model loads now, will download once, or needs the internet that is not there."""
    if hub_cached(model.repo_id, model.kind):
        return f"{model.repo_id} is in the Hugging Face cache: it loads offline."
    if not hub_offline():
        return f"{model.repo_id} downloads once ({model.size}) into the Hugging Face cache, then loads offline."
    return (f"{model.repo_id} needs the internet once: the hub is offline (HF_HUB_OFFLINE=1) and it is not in the "
            f"Hugging Face cache. Download it where there is network (hf download {model.repo_id} --local-dir "
            f"DIR), then put DIR under {local_dir(data_dir, model.kind)} or choose “A folder…” and give DIR.")
