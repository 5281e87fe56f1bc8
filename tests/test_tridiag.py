"""One tridiagonalization for all eigenvalues and the top-k vectors (explorer.core.tridiag),
against numpy's float64 eigh.  Tolerances: float64 values within 1e-12 of the largest and
residuals within 1e-11; float32 refined top-k values within 1e-9 relative of the float64 solution
of the same float32 matrix, its tail within 1e-5 of the largest."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg.lapack as lapack

from explorer.core.tridiag import apply_reflectors, eigh_tridiagonal_top


def _planted(d: int, seed: int = 0) -> np.ndarray:
    """A PSD matrix with 6 separated planted eigenvalues above a Wishart bulk."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((d, 2 * d))
    p = min(6, d)
    u = np.linalg.qr(rng.standard_normal((d, p)))[0]
    x += u @ (rng.standard_normal((p, 2 * d)) * np.array([6.0, 5.0, 4.0, 3.0, 2.5, 2.0])[:p, None])
    return x @ x.T


@pytest.mark.parametrize("d,k", [(1, 1), (2, 1), (65, 65), (130, 20), (257, 64)])
def test_float64_matches_numpy(d, k):
    a = _planted(d, seed=d)
    ref_vals, ref_vecs = np.linalg.eigh(a)
    ref_vals, ref_vecs = ref_vals[::-1], ref_vecs[:, ::-1]
    vals, vecs = eigh_tridiagonal_top(a.copy(), k)
    scale = ref_vals[0]
    assert vals.shape == (d,) and vecs.shape == (d, k) and vecs.dtype == np.float64
    np.testing.assert_allclose(vals, ref_vals, atol=1e-12 * scale, rtol=0)
    assert np.all(np.diff(vals) <= 0)
    assert np.linalg.norm(a @ vecs - vecs * vals[:k]) <= 1e-11 * scale
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)
    # The planted (separated) directions agree with numpy's one by one, up to sign.
    top = min(k, 6, d - 1) if d > 1 else 1
    np.testing.assert_allclose(np.abs(np.sum(vecs[:, :top] * ref_vecs[:, :top], axis=0)), 1.0, atol=1e-10)


def test_top_values_only():
    a = _planted(150)
    ref = np.linalg.eigvalsh(a)[::-1]
    vals, vecs = eigh_tridiagonal_top(a.copy(), 10, all_values=False)
    assert vals.shape == (10,) and vecs.shape == (150, 10)
    np.testing.assert_allclose(vals, ref[:10], rtol=1e-12)


def test_float32_is_refined_in_float64():
    a32 = _planted(300, seed=3).astype(np.float32)
    a64 = a32.astype(np.float64)
    ref_vals, ref_vecs = np.linalg.eigh(a64)
    ref_vals, ref_vecs = ref_vals[::-1], ref_vecs[:, ::-1]
    vals, vecs = eigh_tridiagonal_top(a32.copy(), 40)
    assert vecs.dtype == np.float64
    np.testing.assert_allclose(vals[:40], ref_vals[:40], rtol=1e-9)
    np.testing.assert_allclose(vals[40:], ref_vals[40:], atol=1e-5 * ref_vals[0], rtol=0)
    assert np.all(np.diff(vals) <= 0)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(40), atol=1e-13)
    np.testing.assert_allclose(np.abs(np.sum(vecs[:, :6] * ref_vecs[:, :6], axis=0)), 1.0, atol=1e-9)


@pytest.mark.parametrize("block", [1, 7, 64, 500])
def test_reflectors_rebuild_the_matrix(block):
    """Q from sytrd's reflectors is orthogonal and A = Q T Q^T, whatever the block size."""
    rng = np.random.default_rng(5)
    d = 97
    m = rng.standard_normal((d, d))
    a = m + m.T
    c, diag, off, tau, info = lapack.dsytrd(np.asfortranarray(a), lower=1)
    assert info == 0
    q = apply_reflectors(c, tau, np.eye(d), block=block)
    t = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
    np.testing.assert_allclose(q.T @ q, np.eye(d), atol=1e-13)
    np.testing.assert_allclose(q @ t @ q.T, a, atol=1e-12 * np.abs(a).max())


def test_bad_inputs():
    with pytest.raises(TypeError, match="float32 or float64"):
        eigh_tridiagonal_top(np.eye(3, dtype=np.int64), 1)
    with pytest.raises(ValueError, match="k must lie"):
        eigh_tridiagonal_top(np.eye(3), 4)
