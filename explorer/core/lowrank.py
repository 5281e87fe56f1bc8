"""One low-rank matrix type, :class:`LowRank`: X = s L R kept factored, or a dense X.

In the spirit of TransformerLens's ``FactoredMatrix``: a LoRA update W = s B A (m x n, rank r)
is held as its factors, and everything the engine and the metrics ask of a model is computed
from them in O(r (d + e)) per product instead of O(d e), never forming X:

* X X^T = F F^T with F = s L T, T T^T = R R^T (d x r): a thin block for Gram accumulation;
* U^T X = s (U^T L) R,  <X, Z>_F = s sum((L^T Z) * R),  ||X||_F^2 = s^2 sum((L^T L) * (R R^T));
* the top-k left singular vectors from an r x e SVD (L = Q T, so X = Q (s T R)).

Shapes are checked once, at construction: :meth:`LowRank.from_lora` is the one validation of a
LoRA triple (B, A, s), with the messages users see; :func:`as_lowrank` turns whatever a stream
yields (a LowRank, a triple, or a dense Tensor where allowed) into a LowRank of the expected
shape in the accumulation dtype and device.  Running sums of many LowRank terms:
:class:`explorer.core.lowrank_sum.LowRankSum`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from explorer.core.backend import as_compute
from explorer.core.errors import InputError
from explorer.core.linalg import psd_sqrt, sign_fix

# Above this smaller side, a dense matrix's top-k left subspace comes from a randomized SVD
# (torch's svd_lowrank with q = max(2k + 16, 64) columns and 16 power iterations); below it,
# from an exact SVD.  Measured on a 1500 x 1600 matrix with a *linearly* decaying spectrum
# (3 -> 0.1, far flatter than trained weights): smallest principal cosine to the exact top-8
# subspace 0.9998, at a quarter of the exact SVD's time.
_EXACT_SVD_SIDE = 1024


class LowRank:
    """X = ``scale`` * ``left`` @ ``right`` (d x e), or the dense X = ``left`` when ``right`` is None.

    Parameters
    ----------
    left : Tensor, shape (d, r), or (d, e) when dense
    right : Tensor, shape (r, e), optional
        None for a dense matrix.
    scale : float
        Finite; only 1.0 for a dense matrix.

    Raises
    ------
    InputError
        If the factors are not 2-D, do not chain (left's columns != right's rows), or the scale
        is not finite.  A LoRA triple is checked, with its adapter's index and the group's
        shape in the message, by :meth:`from_lora`.
    """

    __slots__ = ("left", "right", "scale")

    def __init__(self, left: torch.Tensor, right: torch.Tensor | None = None, scale: float = 1.0):
        rshape = tuple(right.shape) if right is not None else None
        if left.dim() != 2 or (right is not None and (right.dim() != 2 or right.shape[0] != left.shape[1])):
            raise InputError(f"factors {tuple(left.shape)} and {rshape} do not form a d x r times r x e product")
        scale = float(scale)
        if not math.isfinite(scale):
            raise InputError(f"scale {scale} is not finite")
        if right is None and scale != 1.0:
            raise InputError("a dense LowRank has no scale; multiply the matrix instead")
        self.left, self.right, self.scale = left, right, scale

    @classmethod
    def _make(cls, left: torch.Tensor, right: torch.Tensor | None, scale: float) -> "LowRank":
        """Build from factors already known to be consistent (no second check)."""
        obj = cls.__new__(cls)
        obj.left, obj.right, obj.scale = left, right, scale
        return obj

    @classmethod
    def from_lora(cls, b: Any, a: Any, scale: Any, *, index: int = 0,
                  shape: tuple[int, int] | None = None) -> "LowRank":
        """The update s B A of one LoRA adapter, checked once.

        Parameters
        ----------
        b : Tensor, shape (m, r)
        a : Tensor, shape (r, n)
        scale : float
            s = alpha / r (or alpha / sqrt(r) for rsLoRA).
        index : int
            The adapter's position in its stream, for the messages.
        shape : (m, n), optional
            The layer group's shape the update must have.

        Returns
        -------
        LowRank
            left = B, right = A, scale = s (tensors as given: no copy, no dtype change).

        Raises
        ------
        InputError
            ``adapter {i}: B (..) and A (..) do not factor an {m}x{n} update``, or
            ``adapter {i}: scale {s} is not finite``.
        """
        if not isinstance(b, torch.Tensor) or not isinstance(a, torch.Tensor):
            raise InputError(f"adapter {index}: expected a (B, A, scale) triple")
        two_d = b.dim() == 2 and a.dim() == 2
        m, n = shape if shape is not None else ((b.shape[0], a.shape[1]) if two_d else ("?", "?"))
        if not two_d or b.shape[0] != m or a.shape[1] != n or b.shape[1] != a.shape[0]:
            raise InputError(
                f"adapter {index}: B {tuple(b.shape)} and A {tuple(a.shape)} do not factor an {m}x{n} update"
            )
        try:
            s = float(scale)
        except (TypeError, ValueError):
            raise InputError(f"adapter {index}: scale {scale!r} is not a number") from None
        if not math.isfinite(s):
            raise InputError(f"adapter {index}: scale {s} is not finite")
        return cls._make(b, a, s)

    # ------------------------------------------------------------------ structure
    @property
    def factored(self) -> bool:
        """Whether X is held as factors (False for a dense X)."""
        return self.right is not None

    @property
    def shape(self) -> tuple[int, int]:
        """(d, e)."""
        e = self.right.shape[1] if self.right is not None else self.left.shape[1]
        return int(self.left.shape[0]), int(e)

    @property
    def rank(self) -> int:
        """The inner dimension r of the factors, or min(d, e) for a dense X (an upper bound)."""
        return int(self.left.shape[1]) if self.right is not None else min(self.shape)

    @property
    def T(self) -> "LowRank":  # noqa: N802 (numpy's name)
        """X^T (e x d), sharing storage: the in-mode side matrix of a model."""
        if self.right is None:
            return LowRank._make(self.left.T, None, 1.0)
        return LowRank._make(self.right.T, self.left.T, self.scale)

    def to(self, dtype: torch.dtype, device: torch.device) -> "LowRank":
        """The same X in the accumulation dtype and device (self when nothing changes)."""
        left = as_compute(self.left, dtype, device)
        right = as_compute(self.right, dtype, device) if self.right is not None else None
        if left is self.left and right is self.right:
            return self
        return LowRank._make(left, right, self.scale)

    def dense(self) -> torch.Tensor:
        """X itself, shape (d, e) (formed for a factored X)."""
        if self.right is None:
            return self.left
        return self.scale * (self.left @ self.right)

    # ------------------------------------------------------------------ Gram pieces
    def gram_factor(self) -> torch.Tensor:
        """F with F F^T = X X^T, shape (d, min(r, e)).

        s L T with T T^T = R R^T (:func:`~explorer.core.linalg.psd_sqrt`, an r x r eigh); X itself
        when it is dense or when r > e (then the dense X is the thinner factor).
        """
        if self.right is None:
            return self.left
        r, e = self.right.shape
        if r == 0:
            return self.left[:, :0].clone()
        if r > e:
            return self.dense()
        return self.scale * (self.left @ psd_sqrt(self.right @ self.right.T))

    def cogram_factor(self) -> torch.Tensor:
        """F with F F^T = X^T X, shape (e, min(r, d)): the other side's Gram piece."""
        return self.T.gram_factor()

    def column_sum(self) -> torch.Tensor:
        """X 1, shape (d,): the sum of X's columns (for the ``vector`` centering)."""
        if self.right is None:
            return self.left.sum(dim=1)
        return self.scale * (self.left @ self.right.sum(dim=1))

    def sq_norm(self) -> float:
        """||X||_F^2 (for a factored X: s^2 sum((L^T L) * (R R^T)), O(r^2 (d + e)))."""
        if self.right is None:
            return float((self.left * self.left).sum())
        return self.scale**2 * float(((self.left.T @ self.left) * (self.right @ self.right.T)).sum())

    # ------------------------------------------------------------------ products
    def add_to(self, out: torch.Tensor, alpha: float = 1.0) -> None:
        """out += alpha X, in place; ``out`` has shape (d, e)."""
        if self.right is None:
            out.add_(self.left, alpha=alpha)
        else:
            out.addmm_(self.left, self.right, alpha=alpha * self.scale)

    def left_product(self, u: torch.Tensor) -> torch.Tensor:
        """U^T X for U (d x k), shape (k, e)."""
        if self.right is None:
            return u.T @ self.left
        return self.scale * ((u.T @ self.left) @ self.right)

    def __matmul__(self, z: torch.Tensor) -> torch.Tensor:
        """X Z for Z (e x l), shape (d, l)."""
        if self.right is None:
            return self.left @ z
        return self.scale * (self.left @ (self.right @ z))

    def inner(self, z: torch.Tensor) -> float:
        """<X, Z>_F for a dense Z (d x e)."""
        if self.right is None:
            return float((self.left * z).sum())
        return self.scale * float(((self.left.T @ z) * self.right).sum())

    def left_basis(self, k: int) -> np.ndarray:
        """Top-``k`` left singular vectors of X, sign-fixed, float64, truncated to X's rank.

        Zero singular directions (zero columns padding a lower-rank factor, a zero model) are not
        the model's subspace: a rank-4 adapter padded to 8 has 4 own directions, a zero model none.

        Returns: ndarray, shape (d, k'), k' = min(k, numerical rank (:func:`_rank_cut`)), possibly 0.
        """
        if self.right is not None:
            # X = s L R = Q (s T R) with L = Q T: only an r x e SVD is needed.
            q, t = torch.linalg.qr(self.left)
            uu, sv, _ = torch.linalg.svd(self.scale * (t @ self.right), full_matrices=False)
            return _numpy_fixed(q @ uu[:, :_rank_cut(sv, k, self.shape)])
        x, (d, e) = self.left, self.left.shape
        if min(d, e) <= _EXACT_SVD_SIDE:
            u, sv, _ = torch.linalg.svd(x, full_matrices=False)
            return _numpy_fixed(u[:, :_rank_cut(sv, k, self.shape)])
        kk = max(1, min(k, d, e))
        gen = torch.Generator(device=x.device).manual_seed(0)
        # svd_lowrank draws its test matrix from the global generator: fork it to stay deterministic.
        with torch.random.fork_rng(devices=[x.device.index or 0] if x.is_cuda else []):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            u, sv, _ = torch.svd_lowrank(x, q=min(max(2 * kk + 16, 64), min(d, e)), niter=16)
        return _numpy_fixed(u[:, :_rank_cut(sv, kk, self.shape)])

    def __repr__(self) -> str:
        d, e = self.shape
        kind = f"rank {self.rank}, scale {self.scale:g}" if self.factored else "dense"
        return f"LowRank({d}x{e}, {kind}, {self.left.dtype})"


def left_products(u: torch.Tensor, items: Sequence[LowRank]) -> list[torch.Tensor]:
    """U^T X_i (k x e_i) for a block of items (U: d x k), equal to ``x.left_product(u)`` each.

    One product per model reads all of U (8 MB at 4096 x 256) for a thin X_i: memory-bound
    (~2 GFLOP/s measured); one product against the block's concatenated left factors runs at
    the matmul rate.
    """
    return [p @ x.right if x.factored else p for x, p in zip(items, left_factor_products(u, items))]


def left_factor_products(u: torch.Tensor, items: Sequence[LowRank]) -> list[torch.Tensor]:
    """U^T (s L_i) for a block of items, one product for the block: shape (k, r_i) for a factored
    X_i = s L_i R_i (the caller finishes with R_i, or never forms U^T X_i at all), (k, e_i) for a
    dense one (then U^T X_i itself)."""
    if not items:
        return []
    lefts = [x.scale * x.left if x.factored else x.left for x in items]
    p = u.T @ torch.cat(lefts, dim=1)
    out, c = [], 0
    for left in lefts:
        out.append(p[:, c:c + left.shape[1]])
        c += left.shape[1]
    return out


def _rank_cut(sv: torch.Tensor, k: int, shape: tuple[int, int]) -> int:
    """Columns to keep given singular values ``sv`` (descending): at most ``k``, above max(d, e) eps s_max."""
    if sv.numel() == 0:
        return 0
    tol = max(shape) * torch.finfo(sv.dtype).eps * float(sv[0])
    return int(min(k, int((sv > tol).sum()))) if float(sv[0]) > 0 else 0


def _numpy_fixed(u: torch.Tensor) -> np.ndarray:
    """Sign-fixed float64 numpy copy of a basis (d x k)."""
    return sign_fix(u.cpu().double().numpy())


def as_lowrank(item: Any, index: int, shape: tuple[int, int], dtype: torch.dtype | None = None,
               device: torch.device | None = None, *, dense: bool = False) -> LowRank:
    """One stream item as a LowRank X (m x n) in the accumulation dtype and device.

    The one coercion every entry point uses: streams of the ``dW`` view yield LowRank items
    (already checked by :meth:`LowRank.from_lora`; only their shape is compared here), while
    tests and users may pass plain (B, A, scale) triples, checked here by the same constructor.

    Parameters
    ----------
    item : LowRank, (B (m, r), A (r, n), scale), or Tensor (m, n) when ``dense``
    index : int
        Position in the stream, for the messages.
    shape : (m, n)
    dtype, device : torch dtype and device of the accumulation, optional
        Both or neither: without them the tensors are kept as they are.
    dense : bool
        Accept dense matrices (the metrics passes read both kinds); the factored engine does not.

    Returns
    -------
    LowRank, shape (m, n)

    Raises
    ------
    InputError
        If the item is not of an accepted kind or does not have the group's shape.
    """
    m, n = (int(v) for v in shape)
    if isinstance(item, torch.Tensor) or (isinstance(item, LowRank) and not item.factored):
        if not dense:
            raise InputError(f"adapter {index}: expected a (B, A, scale) triple")
        w = item if isinstance(item, torch.Tensor) else item.left
        if tuple(w.shape) != (m, n):
            raise InputError(f"model {index}: matrix of shape {tuple(w.shape)} does not match the group's {(m, n)}")
        x = LowRank._make(w, None, 1.0)
    elif isinstance(item, LowRank):
        if item.shape != (m, n):
            raise InputError(f"adapter {index}: B {tuple(item.left.shape)} and A {tuple(item.right.shape)} "
                             f"do not factor an {m}x{n} update")
        x = item
    else:
        try:
            b, a, s = item
        except (TypeError, ValueError):
            what = "a matrix or a (B, A, scale) triple" if dense else "a (B, A, scale) triple"
            raise InputError(f"{'model' if dense else 'adapter'} {index}: expected {what}") from None
        x = LowRank.from_lora(b, a, s, index=index, shape=(m, n))
    return x if dtype is None else x.to(dtype, device)
