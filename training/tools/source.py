"""A single-file checkpoint opened for reading one tensor at a time: ``.safetensors`` through its header (tensors
read lazily, untouched ones copied as bytes), ``.ckpt``/``.pt`` loaded whole with ``weights_only=True``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.contract.errors import UserError
from training.tools.stream import DTYPES, Entry, copy_writer, tensor_writer

TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FLOATS = ("F16", "BF16", "F32", "F64")


@dataclass
class Checkpoint:
    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # safetensors: absolute (start, length)
    tensors: dict[str, torch.Tensor] | None = None                      # a pickle, loaded whole
    _handle: Any = None

    def tensor(self, key: str) -> torch.Tensor:
        if self.tensors is not None:
            return self.tensors[key]
        if key in self.offsets and self.dtypes[key] in TORCH_DTYPES:
            return self._read(key)
        if self._handle is None:
            from safetensors import safe_open

            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
        return self._handle.get_tensor(key)

    def _read(self, key: str) -> torch.Tensor:
        """A plain read of the tensor's bytes rather than safetensors' memory map, whose pages would stay in this
        process's resident memory until the end of a merge."""
        start, length = self.offsets[key]
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = bytearray(fh.read(length))
        if len(data) != length:
            raise UserError(f"{self.path}: is truncated at {key}; get the file again")
        dtype = TORCH_DTYPES[self.dtypes[key]]
        if not data:
            return torch.empty(self.shapes[key], dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(self.shapes[key])

    def entry(self, key: str, dtype: str | None = None) -> Entry:
        """The key as it is (bytes copied from a safetensors file), or cast to ``dtype`` when that differs."""
        want = dtype if dtype and self.dtypes[key] in FLOATS else self.dtypes[key]
        if want == self.dtypes[key] and key in self.offsets:
            return Entry(key, want, self.shapes[key], copy_writer(self.path, *self.offsets[key]))
        return Entry(key, want, self.shapes[key],
                     tensor_writer(lambda: self.tensor(key).to(TORCH_DTYPES[want])))


def open_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder; extract takes single-file checkpoints (.safetensors or .ckpt)")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint file not found; check the path")
    if path.suffix.lower() == ".safetensors":
        return _open_safetensors(path)
    from training.models.checkpoint import read_checkpoint

    tensors = read_checkpoint(path)
    unknown = sorted({str(t.dtype) for t in tensors.values() if t.dtype not in DTYPES})
    if unknown:
        raise UserError(f"{path}: holds tensors of type {unknown}; convert it to .safetensors first")
    return Checkpoint(path, {k: tuple(t.shape) for k, t in tensors.items()},
                      {k: DTYPES[t.dtype] for k, t in tensors.items()}, {}, tensors=tensors)


def _open_safetensors(path: Path) -> Checkpoint:
    from training.contract.st_header import read_header

    try:
        header, start = read_header(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .safetensors file ({str(err).splitlines()[0][:200]}); the file "
                        "is damaged or incomplete, download it again") from None
    metadata = header.pop("__metadata__", None) or {}
    size = path.stat().st_size
    shapes, dtypes, offsets = {}, {}, {}
    for key, info in header.items():
        begin, end = info["data_offsets"]
        shapes[key], dtypes[key], offsets[key] = tuple(info["shape"]), info["dtype"], (start + begin, end - begin)
    end_of_data = start + max((b + n - start for b, n in offsets.values()), default=0)
    if end_of_data > size:
        raise UserError(f"{path}: is truncated ({size} of {end_of_data} bytes); the download or copy did not "
                        "finish, get the file again")
    return Checkpoint(path, shapes, dtypes, {str(k): str(v) for k, v in metadata.items()}, offsets)
