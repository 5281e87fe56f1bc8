"""Random-subspace references for the angle views (what "no shared structure" looks like)."""
from __future__ import annotations

import numpy as np


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
    k = max(1, min(k, d))
    rng = np.random.default_rng(seed)
    out = np.empty((draws, k))
    for i in range(draws):
        q = np.linalg.qr(rng.standard_normal((d, k)))[0]
        # Against the fixed subspace spanned by the first k coordinates, the cosines are the
        # singular values of q's first k rows.
        out[i] = np.linalg.svd(q[:k], compute_uv=False)
    return np.degrees(np.arccos(np.clip(out.ravel(), 0.0, 1.0)))
