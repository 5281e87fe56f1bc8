"""The shared kernels of explorer.core.linalg against float64 references (numpy/scipy, explicit centering)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import (
    PARTIAL_EIGH_MIN,
    center_matrix,
    centered_gram,
    double_center,
    eigh_desc,
    eigh_np,
    eigh_top,
    eigvalsh_desc,
    k_at,
    k_table,
    partial_eigh,
    psd_sqrt,
    sign_fix,
    subtract_center,
)


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


# --------------------------------------------------------------------------- the other shared kernels


def _sides(n=5, d=7, e=4, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((d, e)) for _ in range(n)]


@pytest.mark.parametrize("center", ["none", "model", "vector"])
def test_centered_gram_equals_explicit_centering(center):
    xs = _sides()
    n, (d, e) = len(xs), xs[0].shape
    if center == "model":
        z = np.mean(xs, axis=0)
    elif center == "vector":
        z = np.repeat(np.concatenate(xs, axis=1).mean(axis=1, keepdims=True), e, axis=1)
    else:
        z = np.zeros((d, e))
    ref = sum((x - z) @ (x - z).T for x in xs)
    g = torch.from_numpy(sum(x @ x.T for x in xs))
    s = torch.from_numpy(sum(xs))
    np.testing.assert_allclose(centered_gram(g, s, n, center).numpy(), ref, rtol=1e-12, atol=1e-12)
    zt = center_matrix(s, n, center)
    assert (zt is None) == (center == "none")
    if zt is not None:
        np.testing.assert_allclose(zt.numpy(), z, atol=1e-14)
        # the general expansion agrees with the specialised one (float64 round-off)
        np.testing.assert_allclose(subtract_center(g, s, zt, n).numpy(), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(OptionError, match="center 'mean'"):
        centered_gram(g, s, n, "mean")


def test_double_center_is_j_k_j_for_numpy_and_torch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 30))
    k = x @ x.T
    j = np.eye(6) - 1.0 / 6
    np.testing.assert_allclose(double_center(k), j @ k @ j, atol=1e-12)
    np.testing.assert_allclose(double_center(torch.from_numpy(k)).numpy(), j @ k @ j, atol=1e-12)


def test_sign_fix_same_rule_for_numpy_and_torch():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((9, 4))
    a, b = sign_fix(v), sign_fix(torch.from_numpy(v)).numpy()
    np.testing.assert_array_equal(a, b)
    idx = np.abs(a).argmax(axis=0)
    assert (a[idx, np.arange(4)] > 0).all()
    np.testing.assert_array_equal(np.abs(a), np.abs(v))


def test_eigh_variants_agree_with_scipy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 60))
    g = x @ x.T
    ref = scipy.linalg.eigh(g)[0][::-1]
    vals, vecs = eigh_top(torch.from_numpy(g), 5)
    np.testing.assert_allclose(vals, ref[:5], rtol=1e-12)
    assert vecs.shape == (40, 5)
    np.testing.assert_allclose(eigvalsh_desc(g), ref, rtol=1e-10, atol=1e-10 * ref[0])
    v_np, q_np = eigh_np(g)
    np.testing.assert_allclose(v_np, ref, rtol=1e-10, atol=1e-10 * ref[0])
    np.testing.assert_allclose(np.abs(q_np[:, :5].T @ vecs.numpy()), np.eye(5), atol=1e-8)
    # one rule for the partial path: only on the CPU, for large sides and few vectors
    assert partial_eigh(PARTIAL_EIGH_MIN, 16) and not partial_eigh(PARTIAL_EIGH_MIN - 1, 16)
    assert not partial_eigh(4096, 2048) and not partial_eigh(4096, 16, "cuda")


def test_psd_sqrt_and_k_at():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 6))
    m = torch.from_numpy(a @ a.T)
    t = psd_sqrt(m)
    np.testing.assert_allclose((t @ t.T).numpy(), m.numpy(), rtol=1e-12, atol=1e-12)
    cum = np.array([0.5, 0.8, 0.9, 1.0])
    assert k_at(cum, 0.5) == 1 and k_at(cum, 0.85) == 3 and k_at(cum, 1.0) == 4
    assert k_table(cum, (0.5, 0.9)) == {"0.5": 1, "0.9": 3}
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(OptionError, match="tau must lie in"):
            k_at(cum, bad)
