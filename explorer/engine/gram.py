"""Gram accumulation kernels: sum of P P^T over thin column blocks P, kept compute-bound.

Two tricks, both measured on a 2-core CPU: (1) adding one rank-16 product per model to a
4096^2 Gram is memory-bound (~7 GFLOP/s against ~130 for one large matmul), so blocks are
copied into one preallocated d x w buffer and folded in with one large product; (2) torch has no
syrk, so only the upper block triangle of a p x p partition is computed and mirrored on read.
"""
from __future__ import annotations

import torch

from explorer.core.timing import stage


def _sym_bounds(d: int, triangular: bool = False) -> list[int]:
    """Row-block bounds for :func:`sym_update_`: more blocks skip more of the redundant half.

    A triangular factor skips more with finer blocks (measured at 4096 x 8000, the first 4096
    columns triangular: 0.66 s with 4 blocks, 0.58 s with 8; a dense one is fastest with 4).
    """
    parts = 1 if d < 256 else 2 if d < 4096 else 4
    if triangular and d >= 2048:
        parts = 8
    return [d * i // parts for i in range(parts + 1)]


def sym_update_(gram: torch.Tensor, x: torch.Tensor, upper: int = 0) -> None:
    """gram += x x^T on the upper block triangle only (x: d x w); see :func:`sym_mirror_`.

    torch has no syrk; computing only the diagonal and upper off-diagonal blocks of a p x p
    block partition saves (p - 1) / (2p) of the flops of one full product.

    ``upper``: the first ``upper`` columns of x are upper triangular (x[r, c] = 0 for r > c, as
    the null draws' Bartlett factor is), so block row j meets them only from column b_j on:
    their share of the product costs about a third of a dense one's.  Its blocks are finer, so
    mirror such a Gram with ``sym_mirror_(gram, triangular=True)``.
    """
    b = _sym_bounds(gram.shape[0], triangular=upper > 0)
    with stage("gram"):
        for i in range(len(b) - 1):
            for j in range(i, len(b) - 1):
                c0 = min(b[j], upper)
                gram[b[i]:b[i + 1], b[j]:b[j + 1]].addmm_(x[b[i]:b[i + 1], c0:], x[b[j]:b[j + 1], c0:].T)


def sym_mirror_(gram: torch.Tensor, triangular: bool = False) -> torch.Tensor:
    """Copy the upper off-diagonal blocks written by :func:`sym_update_` to the lower ones
    (``triangular``: of updates made with ``upper`` > 0, whose blocks are finer)."""
    b = _sym_bounds(gram.shape[0], triangular)
    for i in range(len(b) - 1):
        for j in range(i + 1, len(b) - 1):
            gram[b[j]:b[j + 1], b[i]:b[i + 1]] = gram[b[i]:b[i + 1], b[j]:b[j + 1]].T
    return gram


def _buffer_width(d: int) -> int:
    """Columns stacked before each Gram product: wide enough to be compute-bound, ~64 MiB."""
    return int(max(256, min(4096, (8 << 20) // max(d, 1))))


class StackedGram:
    """G = sum of P P^T over column blocks P (d x c), stacking blocks before each product.

    One thin product per model (c = 16 into d = 4096) is memory-bound; copying many blocks
    into one preallocated d x w buffer and doing one d x w x d product keeps it compute-bound.

    Parameters
    ----------
    d : int
    dtype, device : torch dtype and device of the accumulation.
    """

    def __init__(self, d: int, dtype: torch.dtype, device: torch.device):
        self.d, self.dtype, self.device = d, dtype, device
        self.gram = torch.zeros(d, d, dtype=dtype, device=device)
        self._width = _buffer_width(d)
        self._buf: torch.Tensor | None = None
        self._used = 0

    def add(self, piece: torch.Tensor) -> None:
        """Add P P^T for one block P, shape (d, c), already in the accumulation dtype/device."""
        c = piece.shape[1]
        if c >= self._width:
            sym_update_(self.gram, piece)
            return
        if self._used + c > self._width:
            self.flush()
        if self._buf is None:
            self._buf = torch.empty(self.d, self._width, dtype=self.dtype, device=self.device)
        self._buf[:, self._used:self._used + c].copy_(piece)
        self._used += c

    def flush(self) -> torch.Tensor:
        """Fold the buffer into the Gram; return the Gram, shape (d, d)."""
        if self._used:
            sym_update_(self.gram, self._buf[:, :self._used])
            self._used = 0
        return sym_mirror_(self.gram)

    def absorb(self, other: StackedGram) -> None:
        """Add another accumulator's Gram (over other blocks) to this one."""
        self.flush()
        self.gram += other.flush()

    def compact(self) -> None:
        """Fold the buffer in and drop it: a pickled accumulator then carries only its d x d Gram."""
        self.flush()
        self._buf = None
