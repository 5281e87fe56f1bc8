"""Held-out coverage: refit the shared basis without some models, measure what it captures of them.

Every model enters the engine as a *side matrix* X_i (d x e): W_i in out-mode, W_i^T in
in-mode, so the basis is always the left one (a :class:`~explorer.core.lowrank.LowRank`, kept
factored for LoRA updates).  One streaming pass accumulates, per cell of a
partition of the models (the k folds, or the metadata groups), the Gram G_c = sum X_i X_i^T and
the sum S_c = sum X_i.  The basis fitted *without* fold f then comes from the downdated sums

    G_{-f} = G - G_f,   S_{-f} = S - S_f,   N_{-f} = N - |f|

and centering (DESIGN.md) subtracts a matrix Z fitted on the same models:

    sum (X_i - Z)(X_i - Z)^T = G - Z S^T - S Z^T + N Z Z^T,
    Z = S / N (center=model)  or  Z = c 1^T with c the mean column of [X_1 ... X_N] (center=vector).

No file is read again to refit; leave-one-out downdates by the one model being evaluated.
"""
from __future__ import annotations

import numpy as np
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import eigh_np
from explorer.core.lowrank import LowRank
from explorer.core.lowrank_sum import LowRankSum
from explorer.engine.gram import StackedGram


def fold_assignment(n_models: int, folds: int, seed: int = 0) -> np.ndarray:
    """Assign each model to one of ``folds`` folds, balanced and seeded (shape (N,), ints).

    Families are often stored ordered by task, so folds are a seeded shuffle, not contiguous.
    """
    if n_models < 2:
        raise OptionError(f"held-out coverage needs at least 2 models, the family has {n_models}")
    if folds < 2:
        raise OptionError(f"k-fold coverage needs at least 2 folds, got {folds}")
    folds = min(folds, n_models)
    perm = np.random.default_rng(seed).permutation(n_models)
    out = np.empty(n_models, dtype=np.int64)
    out[perm] = np.arange(n_models) % folds
    return out


class PartitionGrams:
    """Per-cell Gram and sum of side matrices, for one partition of the models.

    Parameters
    ----------
    cells : ndarray of int, shape (N,)
        Cell of each model, 0..n_cells-1 (fold or group index).
    d, e : int
        Side matrix shape.
    dtype, device : torch dtype and device of the accumulation.
    """

    def __init__(self, cells: np.ndarray, d: int, e: int, dtype: torch.dtype, device: torch.device):
        self.cells = np.asarray(cells, dtype=np.int64)
        self.n_cells = int(self.cells.max()) + 1 if len(self.cells) else 0
        self._grams = [StackedGram(d, dtype, device) for _ in range(self.n_cells)]
        # Sums kept as stacked factors and folded by wide products: adding one rank-16 ΔW to a
        # 4096 x 4096 sum per model is memory-bound (500 of them took longer than the Gram).
        self._sums = [LowRankSum((d, e), dtype, device) for _ in range(self.n_cells)]
        self.count = np.bincount(self.cells, minlength=self.n_cells)

    def add(self, i: int, x: LowRank) -> None:
        """Add model ``i``'s side matrix X (d x e) to its cell."""
        c = int(self.cells[i])
        self._grams[c].add(x.gram_factor())
        self._sums[c].add(x)

    def absorb(self, other: PartitionGrams) -> None:
        """Add the Grams and sums of ``other`` (the same partition, other models) to these cells."""
        if other.n_cells != self.n_cells or not np.array_equal(other.cells, self.cells):
            raise ValueError("cannot add the sums of another partition")
        for c in range(self.n_cells):
            self._grams[c].absorb(other._grams[c])
            self._sums[c].add(other._sums[c].value())

    def compact(self) -> None:
        """Fold every cell's pending Gram buffer in and drop it, and trim the sums' factor buffers
        (before the sums are pickled)."""
        for gram in self._grams:
            gram.compact()
        for total in self._sums:
            total.compact()

    def release(self) -> None:
        """Drop every cell's Gram and sum once nothing reads them again (the fold bases are fitted):
        at side 4096 five fold Grams are 670 MB that the rest of an analysis does not need."""
        self._grams, self._sums = [], []

    def _gram(self, c: int) -> torch.Tensor:
        return self._grams[c].flush()

    def _sum(self, c: int) -> torch.Tensor:
        # Densified in place: the cell's factors are not kept beside its dense sum (they grow with
        # N, 5 x 105 MB at 500 rank-16 ΔW of side 4096, while the dense sums do not).
        return self._sums[c].densify()

    def total(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Raw Gram, sum and count over all models."""
        g = self._gram(0).clone()
        s = self._sum(0).clone()
        for c in range(1, self.n_cells):
            g += self._gram(c)
            s += self._sum(c)
        return g, s, int(self.count.sum())

    def cell(self, c: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Raw Gram, sum and count of the models in cell ``c``."""
        return self._gram(c), self._sum(c), int(self.count[c])

    def without(self, c: int, total: tuple[torch.Tensor, torch.Tensor, int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Raw Gram, sum and count of all models *not* in cell ``c`` (the downdate).

        ``total`` is :meth:`total` when the caller already has it (one sum for all cells).
        """
        g, s, n = total if total is not None else self.total()
        return g - self._gram(c), s - self._sum(c), n - int(self.count[c])


def centered_norm2(x: LowRank, z: torch.Tensor | None, zz: float | None = None) -> float:
    """||X - Z||_F^2 (exact for dense X; by expansion for a factored one, which is never formed).

    ``zz`` = ||Z||^2 when the caller has it (one Z serves every model).
    """
    if z is None:
        return x.sq_norm()
    if not x.factored:
        r = x.dense() - z
        return float((r * r).sum())
    zz = float((z * z).sum()) if zz is None else float(zz)
    return max(x.sq_norm() - 2 * x.inner(z) + zz, 0.0)


def projection(u: torch.Tensor, x: LowRank, z: torch.Tensor | None, uz: torch.Tensor | None) -> torch.Tensor:
    """U^T (X - Z), shape (k, e); ``uz`` = U^T Z precomputed once per basis."""
    p = x.left_product(u)
    return p - uz if uz is not None else p


def captured_curve(u: torch.Tensor, x: LowRank | torch.Tensor, z: torch.Tensor | None = None,
                   uz: torch.Tensor | None = None) -> np.ndarray:
    """One-sided captured energy ||U_k^T (X - Z)||^2 / ||X - Z||^2 for k = 1..u.shape[1].

    Parameters
    ----------
    u : Tensor, shape (d, k)
        Orthonormal basis.
    x : LowRank or Tensor, shape (d, e)
    z : Tensor, shape (d, e), optional
        Centering matrix subtracted from X.
    uz : Tensor, shape (k, e), optional
        U^T Z (computed here when omitted).

    Returns
    -------
    ndarray, shape (k,)
        Non-decreasing, in [0, 1]; zeros for a zero matrix.
    """
    if isinstance(x, torch.Tensor):
        x = LowRank(x)
    if z is not None and uz is None:
        uz = u.T @ z
    return curve_from_projection(projection(u, x, z, uz), centered_norm2(x, z))


def curve_from_projection(p: torch.Tensor, tot: float) -> np.ndarray:
    """:func:`captured_curve` from the projection P = U^T (X - Z) (k x e) and ||X - Z||^2 at hand.

    Returns
    -------
    ndarray, shape (k,)
        cumsum of the rows' energies over ``tot``, clipped to [0, 1]; zeros when ``tot`` <= 0.
    """
    return curve_from_rows((p**2).sum(dim=1), tot)


def curve_from_rows(rows: torch.Tensor, tot: float) -> np.ndarray:
    """The captured-energy curve from each basis direction's energy ``rows`` (shape (k,)) and the total.

    For a factored X = s L R with P = U^T (s L) (k x r), rows = diag(P (R R^T) P^T): the k x e
    projection is never formed.
    """
    if tot <= 0:
        return np.zeros(rows.shape[0])
    return np.clip(torch.cumsum(rows, 0).cpu().double().numpy() / tot, 0.0, 1.0)


def mean_only(x: LowRank | torch.Tensor, mu: torch.Tensor, mm: float | None = None,
              xm: float | None = None) -> tuple[float, float]:
    """Mean-only baseline for one held-out model X (LowRank or Tensor, d x e) and the mean ``mu``.

    ``mm`` = ||mu||^2 and ``xm`` = <X, mu> when the caller has them (one mean serves a whole fold,
    and a block of factored models gets its inner products from one product: for a 4096 x 4096
    ΔW, per-model passes over mu would dominate the metrics).

    Returns
    -------
    captured : float
        Share of ||X||^2 along the mean's direction, <X, mu>^2 / (||mu||^2 ||X||^2).
    rel_error : float
        ||X - mu|| / ||X||: relative error of reconstructing X by the mean itself.
    """
    if isinstance(x, torch.Tensor):
        x = LowRank(x)
    xx = x.sq_norm()
    mm = float((mu * mu).sum()) if mm is None else float(mm)
    if xx <= 0:
        return 0.0, 0.0
    xm = x.inner(mu) if xm is None else float(xm)
    cap = xm * xm / (mm * xx) if mm > 0 else 0.0
    # Dense: ||X - mu||^2 exactly; factored: by expansion with the inner product at hand.
    dist2 = centered_norm2(x, mu) if not x.factored else max(xx - 2 * xm + mm, 0.0)
    return float(min(max(cap, 0.0), 1.0)), float(np.sqrt(dist2 / xx))


def kernel_heldout(kmat: np.ndarray, train: np.ndarray, test: np.ndarray, k: int, center: str) -> np.ndarray:
    """Held-out captured energy in model mode, from the model kernel K_ij = <W_i, W_j> alone.

    The training models' principal directions in R^{mn} are v_l = X_t^T q_l / sqrt(lambda_l) for
    the eigenpairs of their (centered) kernel, so a held-out model's coordinate on v_l is
    (k_j . q_l) / sqrt(lambda_l): no parameter-space vector is ever formed.

    Parameters
    ----------
    kmat : ndarray, shape (N, N)
    train, test : ndarray of int
        Model indices.
    k : int
        Largest rank reported.
    center : {"none", "model", "vector"}
        Both centerings subtract the training mean model in model mode.

    Returns
    -------
    ndarray, shape (len(test), k)
        Captured energy of each test model for rank 1..k (padded with the last value when the
        training set has fewer than k non-zero directions).
    """
    ktt = kmat[np.ix_(train, train)]
    kjt = kmat[np.ix_(test, train)]
    kjj = kmat[test, test]
    if center != "none":
        rt = ktt.mean(axis=1)
        at = ktt.mean()
        rj = kjt.mean(axis=1)
        ktt = ktt - rt[:, None] - rt[None, :] + at
        kjt = kjt - rj[:, None] - rt[None, :] + at
        kjj = kjj - 2 * rj + at
    vals, vecs = eigh_np(ktt)
    keep = vals > vals[0] * 1e-12 if vals[0] > 0 else np.zeros_like(vals, dtype=bool)
    proj = (kjt @ vecs[:, keep]) ** 2 / vals[keep]
    curve = np.cumsum(proj, axis=1)
    out = np.zeros((len(test), k))
    kk = min(k, curve.shape[1])
    out[:, :kk] = curve[:, :kk]
    if kk < k and kk > 0:
        out[:, kk:] = curve[:, kk - 1 : kk]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(kjj[:, None] > 0, out / kjj[:, None], 0.0)
    return np.clip(out, 0.0, 1.0)
