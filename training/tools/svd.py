"""Low-rank factorisation of a module's delta: the truncated SVD, the share of the delta kept, and kohya's three
rules for choosing a rank per module (``sv_ratio``, ``sv_fro``, ``sv_cumulative``, as its resize_lora.py reads them).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
MIN_SV = 1e-6  # a largest singular value below this is a zero delta: kohya keeps rank 1


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread for many small products and factorisations (a rank-32 module is a few MFLOP): with
    two or more threads each call pays thread wake-ups, which on a busy CPU made an SDXL resize 10x slower
    (measured: a 10240 x 32 QR took 4 ms on one thread and 220 ms on two while other processes ran)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Factors:
    """delta ~= up @ down with ``up`` [out, k] and ``down`` [k, in]; ``singular`` holds every singular value of the
    delta (zeros past its rank included), ``kept`` the share of its Frobenius norm that up @ down keeps."""

    up: torch.Tensor
    down: torch.Tensor
    singular: torch.Tensor
    kept: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def error(self) -> float:
        """Frobenius norm of what was dropped (Eckart-Young: the root of the dropped squared singular values)."""
        return float(self.singular[self.rank:].pow(2).sum().sqrt())


def singular_decomposition(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of a 2-D float32 matrix (thin)."""
    return torch.linalg.svd(matrix.float(), full_matrices=False)


def low_rank_decomposition(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of ``up @ down`` without forming it: QR of both sides reduces the SVD to an r x r core, so an SDXL
    module costs microseconds instead of an SVD of 1280 x 5120. S is padded with zeros to min(out, in) entries."""
    q_up, r_up = torch.linalg.qr(up.float())
    q_down, r_down = torch.linalg.qr(down.float().T)
    core_u, singular, core_vh = torch.linalg.svd(r_up @ r_down.T)
    padded = torch.zeros(min(up.shape[0], down.shape[1]))
    padded[: singular.numel()] = singular[: padded.numel()]
    return q_up @ core_u, padded, core_vh @ q_down.T


def kept_share(singular: torch.Tensor, rank: int) -> float:
    """Share of the Frobenius norm the first ``rank`` singular values keep (1.0 for a zero delta)."""
    total = float(singular.pow(2).sum())
    return 1.0 if total == 0 else math.sqrt(float(singular[:rank].pow(2).sum()) / total)


def truncate(u: torch.Tensor, singular: torch.Tensor, vh: torch.Tensor, rank: int) -> Factors:
    """kohya's split: up = U_k * S_k, down = Vh_k."""
    rank = max(1, min(rank, u.shape[1], vh.shape[0]))
    return Factors(u[:, :rank] * singular[:rank], vh[:rank].contiguous(), singular, kept_share(singular, rank))


def dynamic_rank(singular: torch.Tensor, method: str, value: float) -> int:
    """kohya's per-module rank: the index its rule finds, kept within [1, len(S) - 1], plus one."""
    if float(singular[0]) <= MIN_SV:
        return 1
    if method == "sv_ratio":  # keep the singular values within a factor ``value`` of the largest
        index = int((singular > singular[0] / value).sum())
    elif method == "sv_cumulative":  # keep the share ``value`` of the sum of singular values
        cumulative = torch.cumsum(singular, 0) / singular.sum()
        index = int(torch.searchsorted(cumulative, torch.tensor(value, dtype=cumulative.dtype))) + 1
    elif method == "sv_fro":  # keep the share ``value`` of the Frobenius norm
        squares = singular.pow(2)
        cumulative = torch.cumsum(squares, 0) / squares.sum()
        index = int(torch.searchsorted(cumulative, torch.tensor(value**2, dtype=cumulative.dtype))) + 1
    else:
        raise ValueError(f"unknown dynamic method {method!r}")
    return max(1, min(index, len(singular) - 1)) + 1


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A Linear's [out, in] as is, a Conv2d's [out, in, kh, kw] flattened to [out, in*kh*kw]."""
    return weight.reshape(weight.shape[0], -1)


def to_module(factors: Factors, kernel: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) shaped for the target: LoCon's [r, in, kh, kw] and [out, r, 1, 1] for a conv kernel."""
    down, up = factors.down, factors.up
    if not kernel:
        return down, up
    return down.reshape(down.shape[0], -1, *kernel), up.reshape(up.shape[0], up.shape[1], 1, 1)
