"""The partial eigen path (all eigenvalues + top-k vectors) against a full float64 reference."""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from explorer.core.linalg import PARTIAL_EIGH_MIN, eigh_desc


def test_partial_eigh_matches_full_scipy_eigh():
    d = PARTIAL_EIGH_MIN + 176
    rng = np.random.default_rng(0)
    x = rng.standard_normal((d, d + 300)) * np.geomspace(10, 0.1, d)[:, None]  # a decaying spectrum
    g = x @ x.T
    vals, basis = eigh_desc(torch.from_numpy(g), 256)
    ref_vals, ref_vecs = scipy.linalg.eigh(g)
    ref_vals, ref_vecs = ref_vals[::-1], ref_vecs[:, ::-1]
    # float64: every eigenvalue within 1e-10 of the largest; the top-256 basis spans the same space
    np.testing.assert_allclose(vals, ref_vals, rtol=0, atol=1e-10 * ref_vals[0])
    assert basis.shape == (d, 256)
    np.testing.assert_allclose(basis.T @ basis, np.eye(256), atol=1e-10)
    assert scipy.linalg.subspace_angles(basis[:, :200], ref_vecs[:, :200]).max() < 1e-8
    # sign convention: the largest-magnitude entry of every column is positive
    idx = np.abs(basis).argmax(axis=0)
    assert (basis[idx, np.arange(256)] > 0).all()
