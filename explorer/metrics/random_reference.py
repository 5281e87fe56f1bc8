"""Random-subspace references for the angle views (what "no shared structure" looks like)."""
from __future__ import annotations

import numpy as np


def _random_cosines(d: int, k: int, draws: int, seed: int) -> np.ndarray:
    """Principal cosines between a fixed and ``draws`` uniformly random k-dim subspaces of R^d.

    Returns
    -------
    ndarray, shape (draws, k)
    """
    k = max(1, min(k, d))
    rng = np.random.default_rng(seed)
    out = np.empty((draws, k))
    for i in range(draws):
        q = np.linalg.qr(rng.standard_normal((d, k)))[0]
        # Against the fixed subspace spanned by the first k coordinates, the cosines are the
        # singular values of q's first k rows.
        out[i] = np.linalg.svd(q[:k], compute_uv=False)
    return np.clip(out, 0.0, 1.0)


def random_principal_angles(d: int, k: int, draws: int = 64, seed: int = 0) -> np.ndarray:
    """Principal angles (degrees) between a fixed and a uniformly random k-dim subspace of R^d.

    Parameters
    ----------
    d : int
        Ambient dimension.
    k : int
        Subspace dimension (clipped to d).
    draws : int
        Random subspaces drawn (Haar: QR of a Gaussian matrix).

    Returns
    -------
    ndarray, shape (draws * k,)
        Angles in [0, 90].  Their mean cos^2 is k/d, the random-subspace overlap.
    """
    return np.degrees(np.arccos(_random_cosines(d, k, draws, seed).ravel()))


def random_overlap_band(d: int, k: int, draws: int = 200, seed: int = 0) -> tuple[float, float, float]:
    """Median and 5 % / 95 % quantiles of the overlap of two randomly rotated k-dim subspaces of R^d.

    The reference for model x model overlaps: subspaces with no shared direction, rotated at
    random, overlap k/d on average, and within this band in 90 % of pairs.
    """
    ov = (_random_cosines(d, k, draws, seed) ** 2).mean(axis=1)
    return float(np.median(ov)), float(np.quantile(ov, 0.05)), float(np.quantile(ov, 0.95))
