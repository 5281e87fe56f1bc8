"""Principal angles and overlaps against scipy.linalg.subspace_angles and Monte Carlo."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from explorer.core.errors import OptionError
from explorer.engine.dense import decompose
from explorer.engine.options import SpectralOptions
from explorer.metrics.angles import (
    layer_overlap,
    overlap,
    overlap_matrix,
    principal_angles,
    principal_cosines,
    top_left_basis,
)
from explorer.metrics.baselines import random_subspace_expectation
from explorer.metrics.passes import compute_metrics
from explorer.metrics.results import MetricsOptions


def _orth(rng, d, k):
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


@pytest.mark.parametrize("k1,k2", [(3, 3), (2, 5), (6, 4)])
def test_angles_match_scipy(k1, k2):
    rng = np.random.default_rng(k1 * 10 + k2)
    u, v = _orth(rng, 12, k1), _orth(rng, 12, k2)
    ref = np.sort(scipy.linalg.subspace_angles(u, v))
    got = principal_angles(u, v)
    np.testing.assert_allclose(got, ref, atol=1e-12)
    assert np.all((got >= 0) & (got <= np.pi / 2))
    np.testing.assert_allclose(principal_cosines(u, v), np.cos(ref), atol=1e-12)
    ov = overlap(u, v)
    assert 0 <= ov <= 1
    assert ov == pytest.approx(np.sum(np.cos(ref) ** 2) / min(k1, k2), abs=1e-12)


def test_tiny_angles_are_accurate():
    # arccos alone would return ~1e-8 noise for a 1e-10 rotation; the sine path does not.
    rng = np.random.default_rng(0)
    u = _orth(rng, 8, 2)
    w = _orth(rng, 8, 3)
    perp = w[:, 2] - u @ (u.T @ w[:, 2])
    perp /= np.linalg.norm(perp)
    v = u.copy()
    v[:, 0] = np.cos(1e-10) * u[:, 0] + np.sin(1e-10) * perp
    np.testing.assert_allclose(principal_angles(u, v), np.sort(scipy.linalg.subspace_angles(u, v)), atol=1e-15)
    assert principal_angles(u, v).max() == pytest.approx(1e-10, rel=1e-4)


def test_overlap_extremes_and_errors():
    e = np.eye(6)
    assert overlap(e[:, :2], e[:, :2]) == pytest.approx(1.0)
    assert overlap(e[:, :2], e[:, 2:4]) == pytest.approx(0.0)
    assert overlap(e[:, :2], e[:, :4]) == pytest.approx(1.0)  # containment
    with pytest.raises(OptionError, match="different spaces"):
        overlap(e[:, :2], np.eye(5)[:, :2])


def test_overlap_matrix_equals_pairwise():
    rng = np.random.default_rng(1)
    bases = [_orth(rng, 10, k) for k in (1, 3, 2, 4)]
    others = [_orth(rng, 10, k) for k in (2, 5)]
    m = overlap_matrix(bases)
    assert m.shape == (4, 4)
    for i, a in enumerate(bases):
        for j, b in enumerate(bases):
            assert m[i, j] == pytest.approx(overlap(a, b), abs=1e-12)
        for j, b in enumerate(others):
            assert overlap_matrix(bases, others)[i, j] == pytest.approx(overlap(a, b), abs=1e-12)
    np.testing.assert_allclose(np.diag(m), 1.0)


def test_random_subspace_expectation_matches_monte_carlo():
    rng = np.random.default_rng(2)
    d, k, trials = 20, 5, 2000
    fixed = np.eye(d)[:, :k]
    w = rng.standard_normal((d, 7))
    ovs, caps = [], []
    for _ in range(trials):
        r = _orth(rng, d, k)
        ovs.append(overlap(fixed, r))
        caps.append(((r.T @ w) ** 2).sum() / (w**2).sum())
    expect = float(random_subspace_expectation(d, k))
    assert expect == pytest.approx(k / d)
    # Standard error of the mean is ~0.003 for both at these sizes: 4 sigma tolerance.
    assert np.mean(ovs) == pytest.approx(expect, abs=0.012)
    assert np.mean(caps) == pytest.approx(expect, abs=0.012)
    np.testing.assert_allclose(random_subspace_expectation(4, np.array([1, 4, 9])), [0.25, 1.0, 1.0])


def test_top_left_basis_matches_svd():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((9, 6))
    b = top_left_basis(w, 3)
    u = np.linalg.svd(w)[0][:, :3]
    np.testing.assert_allclose(np.abs(b.T @ u), np.eye(3), atol=1e-10)


def test_layer_overlap_skips_other_dimensions():
    rng = np.random.default_rng(4)
    a, b, c = _orth(rng, 10, 4), _orth(rng, 10, 4), _orth(rng, 7, 4)
    names, m = layer_overlap({"l0": a, "l1": b, "l2": c}, k=2)
    assert names == ["l0", "l1"]
    assert m[0, 1] == pytest.approx(overlap(a[:, :2], b[:, :2]))


def test_model_and_group_angles_in_metrics():
    rng = np.random.default_rng(5)
    u = _orth(rng, 15, 2)
    ws = [u @ rng.standard_normal((2, 8)) + 1e-3 * rng.standard_normal((15, 8)) for _ in range(6)]
    so = SpectralOptions(device="cpu")
    opener = lambda: (torch.from_numpy(w) for w in ws)  # noqa: E731
    sp = decompose(opener(), 6, (15, 8), so)
    labels = [{"group": "ab"[i % 2]} for i in range(6)]
    met = compute_metrics(opener, 6, (15, 8), sp.basis, so, MetricsOptions(k_angles=2, null_draws=0), labels)
    # Every model lives in the same planted plane: all overlaps ~1.
    assert met.overlaps.own.shape == (6, 6)
    assert met.overlaps.own.min() > 0.99 and met.overlaps.vs_universal.min() > 0.99
    assert met.overlaps.cosines.shape == (6, 2) and met.overlaps.cosines.min() > 0.99
    for i, w in enumerate(ws):
        ref = overlap(top_left_basis(w, 2), top_left_basis(ws[0], 2))
        assert met.overlaps.own[i, 0] == pytest.approx(ref, abs=1e-10)
    assert met.groups.names == ["a", "b"] and met.groups.by == "group"
    assert met.groups.overlap[0, 1] > 0.99
    assert np.all((met.groups.vs_universal >= 0) & (met.groups.vs_universal <= 1))


def test_randomized_own_subspace_is_accurate_and_deterministic(monkeypatch):
    from explorer.core import lowrank

    monkeypatch.setattr(lowrank, "_EXACT_SVD_SIDE", 16)  # force the randomized path on a small matrix
    rng = np.random.default_rng(8)
    w = rng.standard_normal((120, 100)) @ np.diag(np.linspace(3, 0.1, 100))
    a = lowrank.LowRank(torch.from_numpy(w)).left_basis(6)
    torch.randn(3)  # the global generator's state must not matter
    b = lowrank.LowRank(torch.from_numpy(w)).left_basis(6)
    np.testing.assert_array_equal(a, b)
    # Slowly (linearly) decaying spectrum, the hard case: cosines to the exact subspace > 0.999.
    assert principal_cosines(a, top_left_basis(w, 6)).min() > 0.999


def test_large_overlap_matrix_matches_pairwise_to_float32():
    # Beyond 64 bases the symmetric product runs in float32: overlaps within 1e-5 of float64 pairs.
    rng = np.random.default_rng(8)
    bases = [np.linalg.qr(rng.standard_normal((40, 3)))[0] for _ in range(70)]
    got = overlap_matrix(bases)
    ref = np.array([[overlap(a, b) for b in bases] for a in bases])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-5)
