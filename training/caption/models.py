"""A MODEL argument turned into a local folder of the right kind, or one line saying why not.

MODEL is a folder (works offline) or a Hugging Face hub id (``owner/name``, or the short name of a model in the
catalogue, ``training/contract/captioners.py``, such as ``wd-vit-tagger-v3``): taken from the usual cache, downloaded
into it with a progress bar when online, and refused in one line when offline and not cached.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

from training.caption.tagger import MODEL_FILE
from training.caption.tags import TAGS_FILE
from training.contract.captioners import known_model
from training.contract.errors import UserError

Kind = Literal["tagger", "captioner"]
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# What a captioner needs from its repository; other weight formats (TensorFlow, Flax, ONNX exports) are skipped.
_CAPTIONER_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
_TAGGER_FILES = [MODEL_FILE, TAGS_FILE]


def resolve_model(spec: str, kind: Kind, trust_remote_code: bool = False) -> Path:
    """The folder ``spec`` names, checked to hold a model of ``kind``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise UserError(f"--{kind} {spec} is a file: give the folder that holds the model ("
                        + (f"{MODEL_FILE} and {TAGS_FILE})" if kind == "tagger" else "config.json and weights)"))
    elif (known := known_model(spec)) is not None:
        if known.kind != kind:
            raise UserError(f"--{kind} {spec}: {known.repo_id} is a {known.kind}, not a {kind}: "
                            f"use --{known.kind} {spec}")
        folder = from_hub(known.repo_id, kind, trust_remote_code)
    elif HUB_ID.match(spec) and not spec.startswith((".", "~")):
        folder = from_hub(spec, kind, trust_remote_code)
    else:
        raise UserError(f"--{kind} {spec}: no such folder (and not a hub id like owner/name)")
    check_kind(folder, kind)
    return folder


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def from_hub(repo_id: str, kind: Kind, trust_remote_code: bool) -> Path:
    """The cached snapshot of ``repo_id``, downloaded first when online (huggingface_hub shows the progress)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = _TAGGER_FILES if kind == "tagger" else _CAPTIONER_FILES + (["*.py"] if trust_remote_code else [])
    how = (f"download it where there is network (hf download {repo_id} --local-dir DIR) and pass "
           f"--{kind} DIR")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=hub_offline()))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise UserError(f"--{kind} {repo_id}: the hub has no such model or it needs a login "
                        f"({type(e).__name__}); check the id, or {how}") from e
    except LocalEntryNotFoundError as e:
        state = "the hub is offline (HF_HUB_OFFLINE=1)" if hub_offline() else "the hub cannot be reached"
        raise UserError(f"--{kind} {repo_id}: {state} and the model is not in the Hugging Face cache; {how}") from e
    except OSError as e:  # connection failures surface as OSError subclasses
        raise UserError(f"--{kind} {repo_id}: download failed ({str(e).splitlines()[0]}); {how}") from e


def check_kind(folder: Path, kind: Kind) -> None:
    """A tagger folder given as a captioner (or the reverse) is one line saying which option fits."""
    is_tagger = (folder / MODEL_FILE).is_file() or (folder / TAGS_FILE).is_file()
    is_transformers = (folder / "config.json").is_file()
    if kind == "captioner" and not is_transformers:
        if is_tagger:
            raise UserError(f"{folder} is a WD14 tagger ({MODEL_FILE} + {TAGS_FILE}), not a captioner: "
                            f"use --tagger {folder}")
        raise UserError(f"captioner folder {folder} has no config.json: give a transformers model folder "
                        "(BLIP, Florence-2 or a vision-language chat model)")
    if kind == "tagger" and is_transformers and not is_tagger:
        raise UserError(f"{folder} is a transformers model, not a WD14 tagger (no {MODEL_FILE}): "
                        f"use --captioner {folder}")


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {folder / 'config.json'}: {e}") from e
