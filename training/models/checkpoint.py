"""Read a single-file checkpoint into a flat ``{key: tensor}`` dict, never executing code from the file.

``.safetensors`` cannot carry code. ``.ckpt``/``.pt``/``.bin`` are pickles: we only ever unpickle them with
``torch.load(weights_only=True)``, whose restricted unpickler refuses every global that is not allow-listed. Real SD1
checkpoints (e.g. ``v1-5-pruned-emaonly.ckpt``) pickle a Lightning ``ModelCheckpoint`` callback under ``callbacks``;
we allow exactly that name, mapped to an inert empty class, so such files load without importing Lightning and
without falling back to ``weights_only=False`` (arbitrary code execution) as some trainers do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.contract.errors import UserError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


class InertStub:
    """Stands in for globals that real checkpoints pickle but that carry no weights.

    It has no methods and no ``__setstate__``, so unpickling it only fills an instance ``__dict__``.
    """


# Only names actually seen in real checkpoints; each maps to the inert stub.
ALLOWED_STUB_GLOBALS = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a single-file checkpoint, unwrapping a Lightning-style ``state_dict`` key.

    Raises ``UserError`` for a missing file, an unknown suffix, or a file that is corrupt or references a forbidden
    global (the message tells the user to convert it to ``.safetensors``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _only_tensors(_unwrap(_read_pickle(path)), path)
    raise UserError(f"{path}: unknown checkpoint type '{suffix}'; use a .safetensors or .ckpt file")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path}: not a readable .safetensors file ({_first_line(e)})") from e


def _read_pickle(path: Path) -> object:
    """Safe unpickle: weights_only=True plus the stub allow-list; any refusal becomes a one-line UserError."""
    allowed = [(InertStub, name) for name in ALLOWED_STUB_GLOBALS]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise UserError(
            f"{path}: cannot be read safely ({_first_line(e)}); convert it to .safetensors with a trusted tool "
            "and use that file instead"
        ) from e


def _unwrap(obj: object) -> object:
    """Lightning checkpoints nest the weights under ``state_dict`` (sometimes more than once)."""
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return obj


def _only_tensors(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
