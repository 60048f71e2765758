"""A safetensors file written tensor by tensor: the header is built first from every tensor's dtype and shape, then
each tensor's bytes are produced and written in order, so at most one tensor is in memory. Untouched tensors of a
safetensors source are copied byte for byte, in chunks."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from training.contract.atomic import atomic_path
from training.contract.disk_space import ensure_space, no_space, ran_out_of_space

DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
ITEM_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
CHUNK = 64 * 1024 * 1024


@dataclass
class Entry:
    """One tensor of the output: its header facts and a function that writes its bytes to the file."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    write: Callable[[BinaryIO], None]

    @property
    def nbytes(self) -> int:
        return ITEM_BYTES[self.dtype] * math.prod(self.shape)


def header_bytes(entries: Sequence[Entry], metadata: Mapping[str, str]) -> bytes:
    """The 8-byte length and the JSON header, padded with spaces to 8 bytes as safetensors writes it."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for entry in entries:
        header[entry.key] = {"dtype": entry.dtype, "shape": list(entry.shape),
                             "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def tensor_writer(make: Callable[[], torch.Tensor]) -> Callable[[BinaryIO], None]:
    """Writes the tensor ``make()`` returns, made only when its turn comes."""
    def write(fh: BinaryIO) -> None:
        tensor = make().contiguous()
        if tensor.numel():
            fh.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return write


def copy_writer(source: Path, start: int, length: int) -> Callable[[BinaryIO], None]:
    """Writes ``length`` bytes of ``source`` from ``start``: an untouched tensor, bit for bit."""
    def write(fh: BinaryIO) -> None:
        with open(source, "rb") as src:
            src.seek(start)
            left = length
            while left:
                block = src.read(min(CHUNK, left))
                if not block:
                    raise OSError(f"{source} ended early; the file is truncated")
                fh.write(block)
                left -= len(block)
    return write


def write_stream(path: Path, entries: Sequence[Entry], metadata: Mapping[str, str], what: str,
                 progress: Callable[[int, int], None] | None = None) -> int:
    """Write atomically after checking the space; returns the size written."""
    head = header_bytes(entries, metadata)
    size = len(head) + sum(e.nbytes for e in entries)
    ensure_space(path.parent, what, size)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(head)
            for n, entry in enumerate(entries):
                before = fh.tell()
                entry.write(fh)
                if fh.tell() - before != entry.nbytes:
                    raise RuntimeError(f"{entry.key}: wrote {fh.tell() - before} bytes, expected {entry.nbytes}")
                if progress:
                    progress(n + 1, len(entries))
    except OSError as err:
        if ran_out_of_space(err, path.parent, size):
            raise no_space(path.parent, what, size) from None
        raise
    return size
