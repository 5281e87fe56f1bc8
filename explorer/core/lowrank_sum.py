"""A running sum of many :class:`~explorer.core.lowrank.LowRank` terms, :class:`LowRankSum`: kept
factored (in two growing buffers) until the dense sum is the cheaper object, then dense."""
from __future__ import annotations

import torch

from explorer.core.errors import InputError
from explorer.core.lowrank import LowRank


class LowRankSum:
    """S = sum_i X_i (d x e) of LowRank terms, kept as concatenated factors until dense is cheaper.

    While the factors' total rank stays at most min(d, e) / 2, S = [s_1 L_1 ... s_N L_N] [R_1; ...; R_N]
    is held factored (O(rank (d + e)) memory).  Beyond it they are folded into a dense d x e sum
    by one compute-bound product, after which new terms are folded in batches of
    max(256, min(d, e) / 8) columns (one rank-r product per term would be memory-bound).
    Dense terms go straight into the dense sum.

    The factors are copied into two buffers (d x c and c x e, c doubling as they fill), not kept
    as one small tensor per term: a thousand 0.5 MB pieces, once freed, stay in the heap as
    holes the process keeps (the fold sums of 500 ΔW showed 100s of MB of such resident memory),
    while a buffer of megabytes is returned to the system when it is dropped.

    Parameters
    ----------
    shape : (d, e)
    dtype, device : torch dtype and device of the terms (as :func:`as_lowrank` gives them).
    """

    # Columns of the first buffers (they double as they fill).
    FIRST_COLUMNS = 64

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device):
        self.shape, self.dtype, self.device = (int(shape[0]), int(shape[1])), dtype, device
        self._lbuf: torch.Tensor | None = None      # (d, c): s_i L_i side by side
        self._rbuf: torch.Tensor | None = None      # (c, e): R_i stacked
        self._rank = 0
        self._dense: torch.Tensor | None = None
        self._cap = max(1, min(self.shape) // 2)
        self.count = 0

    def add(self, x: LowRank) -> None:
        """Add one term X (d x e)."""
        if x.shape != self.shape:
            raise InputError(f"a {x.shape[0]}x{x.shape[1]} term cannot join a sum of {self.shape[0]}x{self.shape[1]}")
        self.count += 1
        if not x.factored:
            self._dense = x.left.clone() if self._dense is None else self._dense.add_(x.left)
            return
        r = int(x.left.shape[1])
        if not r:  # a rank-0 term adds nothing
            return
        self._reserve(self._rank + r)
        torch.mul(x.left, x.scale, out=self._lbuf[:, self._rank:self._rank + r])
        self._rbuf[self._rank:self._rank + r] = x.right
        self._rank += r
        if self._rank > self._cap:
            self._fold()
            self._cap = max(256, min(self.shape) // 8)  # keep folding in wide batches

    def _reserve(self, columns: int) -> None:
        """Buffers of at least ``columns`` columns, the filled ones kept."""
        have = 0 if self._lbuf is None else int(self._lbuf.shape[1])
        if columns <= have:
            return
        # Never beyond what is folded at (the cap plus one term): doubling past it would waste.
        c = max(columns, min(max(2 * have, self.FIRST_COLUMNS), self._cap + columns - self._rank))
        d, e = self.shape
        lbuf = torch.empty(d, c, dtype=self.dtype, device=self.device)
        rbuf = torch.empty(c, e, dtype=self.dtype, device=self.device)
        if self._rank:
            lbuf[:, :self._rank] = self._lbuf[:, :self._rank]
            rbuf[:self._rank] = self._rbuf[:self._rank]
        self._lbuf, self._rbuf = lbuf, rbuf

    def _fold(self) -> None:
        """Move the pending factors into the dense sum with one product, and drop the buffers."""
        if not self._rank:
            return
        prod = self._lbuf[:, :self._rank] @ self._rbuf[:self._rank]
        self._dense = prod if self._dense is None else self._dense.add_(prod)
        self._lbuf = self._rbuf = None
        self._rank = 0

    def compact(self) -> None:
        """Trim the buffers to the filled columns (before the sum is pickled to travel)."""
        if self._lbuf is not None and self._lbuf.shape[1] > self._rank:
            self._lbuf = self._lbuf[:, :self._rank].clone()
            self._rbuf = self._rbuf[:self._rank].clone()

    def densify(self) -> torch.Tensor:
        """S as a dense d x e tensor, which from now on *is* the sum: the factors are dropped.

        For a caller that needs S dense and keeps it (the metrics' fold sums): holding the
        factors beside it would cost up to as much again (at 500 rank-16 ΔW of 4096 x 4096, a
        fold's 1600-column factors are 105 MB beside its 134 MB dense sum).  Later terms are
        added to the returned tensor in place.
        """
        if self._dense is None and not self._rank:
            self._dense = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        self._fold()
        return self._dense

    @property
    def factored(self) -> bool:
        """Whether the sum is still held as factors only."""
        return self._dense is None

    def value(self) -> LowRank:
        """S itself: factored while its rank is small, else dense (a zero d x 0 product when empty).

        The factors are copies: later terms may overwrite the buffers.
        """
        if self._dense is not None:
            self._fold()
            return LowRank._make(self._dense, None, 1.0)
        if not self._rank:
            d, e = self.shape
            return LowRank._make(torch.zeros(d, 0, dtype=self.dtype, device=self.device),
                                 torch.zeros(0, e, dtype=self.dtype, device=self.device), 1.0)
        return LowRank._make(self._lbuf[:, :self._rank].clone(), self._rbuf[:self._rank].clone(), 1.0)

    def gram_factor(self) -> torch.Tensor:
        """F with F F^T = S S^T, shape (d, q), q <= min(rank, e)."""
        return self.value().gram_factor()
