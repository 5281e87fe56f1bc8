"""Principal angles and subspace overlap (DESIGN.md, "Principal angles").

For orthonormal bases U (d x k1) and U' (d x k2) of two subspaces of R^d, the cosines of the
principal angles are the singular values of U^T U', and the overlap is

    overlap(U, U') = sum_j cos^2 theta_j / min(k1, k2) = ||U^T U'||_F^2 / min(k1, k2)  in [0, 1].

A random k-dimensional subspace has expected overlap k/d with a fixed k-dimensional one
(:func:`explorer.metrics.baselines.random_subspace_expectation`).  Everything here is float64 numpy.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import sign_fix
from explorer.engine.gram import StackedGram


def _check_basis(u: np.ndarray, name: str, allow_empty: bool = False) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 2 or (u.shape[1] == 0 and not allow_empty):
        raise OptionError(f"{name} must be a 2-D basis with at least one column, got shape {u.shape}")
    return u


def principal_cosines(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between span(u) and span(v), descending.

    Parameters
    ----------
    u : ndarray, shape (d, k1)
        Orthonormal columns.
    v : ndarray, shape (d, k2)
        Orthonormal columns.

    Returns
    -------
    ndarray, shape (min(k1, k2),)
        In [0, 1] (rounding clipped).
    """
    u, v = _check_basis(u, "u"), _check_basis(v, "v")
    if u.shape[0] != v.shape[0]:
        raise OptionError(f"bases live in different spaces: {u.shape[0]} vs {v.shape[0]} rows")
    s = np.linalg.svd(u.T @ v, compute_uv=False)
    return np.clip(s, 0.0, 1.0)


def principal_angles(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Principal angles in radians, ascending, in [0, pi/2], shape (min(k1, k2),).

    Small angles are computed from the sines (as scipy.linalg.subspace_angles does), because
    arccos loses all precision near cos = 1.
    """
    u, v = _check_basis(u, "u"), _check_basis(v, "v")
    cos = principal_cosines(u, v)
    theta = np.arccos(cos)
    # Sines of the angles: singular values of the part of v orthogonal to span(u).
    if u.shape[1] <= v.shape[1]:
        resid = u - v @ (v.T @ u)
    else:
        resid = v - u @ (u.T @ v)
    sin = np.sort(np.clip(np.linalg.svd(resid, compute_uv=False), 0.0, 1.0))
    small = cos**2 > 0.5
    theta[small] = np.arcsin(sin[: len(cos)][small])
    return np.clip(theta, 0.0, np.pi / 2)


def overlap(u: np.ndarray, v: np.ndarray) -> float:
    """Overlap ``||u^T v||_F^2 / min(k1, k2)`` in [0, 1]; 1 iff one subspace contains the other."""
    u, v = _check_basis(u, "u"), _check_basis(v, "v")
    if u.shape[0] != v.shape[0]:
        raise OptionError(f"bases live in different spaces: {u.shape[0]} vs {v.shape[0]} rows")
    val = float(np.sum((u.T @ v) ** 2)) / min(u.shape[1], v.shape[1])
    return min(max(val, 0.0), 1.0)


def overlap_matrix(bases: Sequence[np.ndarray], others: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Pairwise overlaps between lists of bases, shape (len(bases), len(others)).

    ``others`` defaults to ``bases`` (a symmetric matrix with ones on the diagonal).  All bases of
    one list are stacked side by side so the whole matrix costs one matrix product.  Bases may
    have different widths (own subspaces truncated to each model's rank); a basis with no column
    (a zero model) has no subspace, and its overlaps are NaN.
    """
    if not bases:
        return np.zeros((0, 0))
    others = bases if others is None else others
    if not others:
        return np.zeros((len(bases), 0))
    symmetric = others is bases
    bases = [_check_basis(x, "basis", True) for x in bases]
    others = bases if symmetric else [_check_basis(o, "basis", True) for o in others]
    rows = {x.shape[0] for x in bases} | {x.shape[0] for x in others}
    if len(rows) > 1:
        raise OptionError(f"bases live in different spaces: {' vs '.join(str(r) for r in sorted(rows))} rows")
    if sum(x.shape[1] for x in bases) == 0 or sum(x.shape[1] for x in others) == 0:
        return np.full((len(bases), len(others)), np.nan)
    if symmetric:
        # 500 own subspaces of 8 columns in R^4096: a 4000 x 4000 product of 4096-long columns,
        # as costly as a Gram, so it is one (upper block triangle only, torch's matmul rate), in
        # float32 beyond 64 bases: overlaps in [0, 1] to ~1e-6, far below what is shown.  The
        # stacked transposes are written straight into one buffer of that dtype (65 MB at 500
        # models, not three float64 copies of the stack).
        dtype = torch.float32 if len(bases) > 64 else torch.float64
        at = torch.empty(sum(x.shape[1] for x in bases), bases[0].shape[0], dtype=dtype)
        r = 0
        for x in bases:
            at[r:r + x.shape[1]] = torch.from_numpy(x.T)
            r += x.shape[1]
        gram = StackedGram(at.shape[0], dtype, torch.device("cpu"))
        gram.add(at)
        del at
        prod_t = gram.flush().square_()  # in place: one (sum k)^2 buffer, not three
    else:
        a, b = np.concatenate(bases, axis=1), np.concatenate(others, axis=1)
        prod_t = torch.from_numpy(a.T @ b).square_()
    ka = np.array([x.shape[1] for x in bases])
    kb = np.array([x.shape[1] for x in others])
    if len(set(ka)) == 1 and len(set(kb)) == 1 and ka[0] > 0 and kb[0] > 0:  # equal widths: block sums by reshape
        block = prod_t.reshape(len(ka), int(ka[0]), len(kb), int(kb[0])).sum(dim=(1, 3)).double().numpy()
        return np.clip(block / np.minimum.outer(ka, kb), 0.0, 1.0)
    prod = prod_t.double().numpy()
    ia = np.concatenate([[0], np.cumsum(ka)])
    ib = np.concatenate([[0], np.cumsum(kb)])
    # Block sums of the squared cross-products: prefix sums along both axes.
    cs = np.zeros((prod.shape[0] + 1, prod.shape[1] + 1))
    cs[1:, 1:] = prod.cumsum(0).cumsum(1)
    block = cs[ia[1:]][:, ib[1:]] - cs[ia[:-1]][:, ib[1:]] - cs[ia[1:]][:, ib[:-1]] + cs[ia[:-1]][:, ib[:-1]]
    k = np.minimum.outer(ka, kb).astype(np.float64)
    return np.clip(np.divide(block, k, out=np.full(block.shape, np.nan), where=k > 0), 0.0, 1.0)


def top_left_basis(w: np.ndarray, k: int) -> np.ndarray:
    """Orthonormal basis of the top-``k`` left singular subspace of one matrix.

    Parameters
    ----------
    w : ndarray, shape (d, e)
    k : int

    Returns
    -------
    ndarray, shape (d, min(k, d, e))
        Sign-fixed (largest-magnitude entry of each column positive).
    """
    w = np.asarray(w, dtype=np.float64)
    kk = max(1, min(k, *w.shape))
    return sign_fix(np.linalg.svd(w, full_matrices=False)[0][:, :kk])


def layer_overlap(bases: dict[str, np.ndarray], k: int) -> tuple[list[str], np.ndarray]:
    """Layer x layer overlap of the top-``k`` shared bases of several layer groups.

    Parameters
    ----------
    bases : dict of str to ndarray, each shape (d, k_stored)
        The shared basis of each layer group (``Analysis.spectrum.basis``).  Only groups whose
        basis lives in the same R^d as the first one are comparable; the others are left out.
    k : int

    Returns
    -------
    names : list of str
        The groups kept, in input order.
    matrix : ndarray, shape (len(names), len(names))
    """
    if not bases:
        return [], np.zeros((0, 0))
    items = list(bases.items())
    d = items[0][1].shape[0]
    kept = [(n, b[:, : max(1, min(k, b.shape[1]))]) for n, b in items if b.shape[0] == d]
    return [n for n, _ in kept], overlap_matrix([b for _, b in kept])
