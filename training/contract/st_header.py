"""Read a .safetensors header without torch: 8-byte little-endian length, then a JSON object naming each tensor's
dtype, shape and byte range, plus ``__metadata__``. Used to detect a model's family and to report on a LoRA."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

MAX_HEADER = 100 * 1024 * 1024  # real headers are KBs to a few MB; more means this is not a safetensors file


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(header, offset where the tensor data starts). Raises ValueError (or OSError) for a file that is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n >= MAX_HEADER or 8 + n > Path(path).stat().st_size:
            raise ValueError(f"header length {n} is invalid")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + n
