"""The strength-matched Gaussian null, its Marchenko-Pastur edge and band, against direct sampling."""
from __future__ import annotations

import numpy as np
import pytest

from explorer.core.errors import OptionError
from explorer.metrics import baselines as nulls
from tests.helpers import reference_gram


def test_bartlett_wishart_moments():
    # E[W] = dof * I and Var[W_ij] = dof (i != j) for W ~ W_d(dof, I): 3 % tolerance at 4000 draws.
    rng = np.random.default_rng(0)
    d, dof, draws = 4, 9, 4000
    ws = np.stack([nulls._bartlett(d, dof, rng) for _ in range(draws)])
    np.testing.assert_allclose(ws.mean(axis=0), dof * np.eye(d), atol=0.3)
    assert ws[:, 0, 1].var() == pytest.approx(dof, rel=0.1)
    assert ws[:, 2, 2].var() == pytest.approx(2 * dof, rel=0.1)


def test_null_matches_explicit_gaussian_matrices():
    # Median top-EVR of the Wishart-sampled null vs generating the N Gaussian matrices directly.
    rng = np.random.default_rng(1)
    n, d, e = 6, 10, 7
    energies = rng.uniform(1, 5, n)
    spec = nulls.dense_null_spec(energies, d, e)
    eig = nulls.null_eigenvalues(spec, draws=400, seed=3)
    top_null = np.median(eig[:, 0] / eig.sum(axis=1))
    direct = []
    for _ in range(400):
        xs = []
        for en in energies:
            x = rng.standard_normal((d, e))
            xs.append(x * np.sqrt(en) / np.linalg.norm(x))  # exactly the model's norm
        ev = np.linalg.eigvalsh(reference_gram(xs, "out"))
        direct.append(ev[-1] / ev.sum())
    # Sampling error of a median of 400 draws is ~1 %; 5 % tolerance.
    assert top_null == pytest.approx(np.median(direct), rel=0.05)
    # Energy is matched in expectation.
    assert eig.sum(axis=1).mean() == pytest.approx(energies.sum(), rel=0.05)


def test_band_ordering_and_shape():
    spec = nulls.dense_null_spec(np.linspace(1, 3, 12), 16, 20, dof_removed=20)
    band = nulls.null_band(spec, draws=8, seed=0)
    for lo, med, hi in ((band.evr_lo, band.evr_median, band.evr_hi), (band.cum_lo, band.cum_median, band.cum_hi)):
        assert lo.shape == (16,)
        assert np.all(lo <= med + 1e-15) and np.all(med <= hi + 1e-15)
    assert band.cum_median[-1] == pytest.approx(1.0)
    assert band.exact and band.draws == 8
    again = nulls.null_band(spec, draws=8, seed=0)
    np.testing.assert_array_equal(band.evr_median, again.evr_median)  # seeded: reproducible


def test_mp_edge_matches_sampled_top_eigenvalue():
    # Equal norms, d = 100, q = N e = 2000: Tracy-Widom fluctuations of the top eigenvalue are
    # ~ (d^-2/3) relative, so the sampled top EVR must sit within 5 % of the MP edge.
    spec = nulls.dense_null_spec(np.full(20, 7.0), 100, 100)
    eig = nulls.null_eigenvalues(spec, draws=8, seed=1)
    top = np.median(eig[:, 0] / eig.sum(axis=1))
    assert top == pytest.approx(nulls.mp_edge_evr(spec), rel=0.05)


def test_binned_null_preserves_energy_and_stays_close():
    # Force pooling with a tiny flop budget and compare with the exact per-model null.
    energies = np.repeat([1.0, 4.0], 10)
    spec = nulls.dense_null_spec(energies, 12, 15)
    exact = nulls.null_band(spec, draws=64, seed=2)
    old = nulls._EXACT_FLOPS
    try:
        nulls._EXACT_FLOPS = 1.0
        terms, is_exact = nulls._bins(spec)
        assert not is_exact and len(terms) < len(energies)
        assert sum(t[0] * t[1] for t in terms) * 12 == pytest.approx(energies.sum())
        pooled = nulls.null_band(spec, draws=64, seed=2)
    finally:
        nulls._EXACT_FLOPS = old
    assert not pooled.exact
    np.testing.assert_allclose(pooled.cum_median, exact.cum_median, atol=0.02)


def test_factored_and_model_nulls():
    spec = nulls.factored_null_spec(np.ones(30), 64, np.full(30, 4))
    band = nulls.null_band(spec, draws=4)
    assert band.mp_edge_evr == pytest.approx((8 + np.sqrt(120)) ** 2 / (64 * 120))
    assert np.all(band.cum_lo <= band.cum_hi)
    mb = nulls.model_null_band(np.linspace(1, 2, 9), mn=500, center=True, draws=6)
    assert mb.evr_median.shape == (9,)
    assert mb.evr_median[-1] == pytest.approx(0.0, abs=1e-10)  # centering removes one direction
    assert np.all(mb.evr_lo <= mb.evr_hi + 1e-15)


def test_random_subspace_and_errors():
    ks = np.arange(1, 10)
    np.testing.assert_allclose(nulls.random_subspace_expectation(8, ks), np.minimum(ks / 8, 1))
    with pytest.raises(OptionError, match="dimension"):
        nulls.random_subspace_expectation(0, 1)
    with pytest.raises(OptionError, match="draws"):
        nulls.null_eigenvalues(nulls.dense_null_spec(np.ones(2), 3, 3), draws=0)


def test_tridiagonal_wishart_has_the_bartlett_law():
    # Dumitriu-Edelman: eigenvalues of the bidiagonal model have the law of W_d(dof, I)'s.
    # 3000 draws each: mean sorted eigenvalues within 3 %, spread of the top within 10 %.
    rng = np.random.default_rng(4)
    d, dof, draws = 12, 20, 3000
    tri = np.stack([nulls.laguerre_eigenvalues(d, dof, rng) for _ in range(draws)])
    dense = np.stack([np.linalg.eigvalsh(nulls._bartlett(d, dof, rng))[::-1] for _ in range(draws)])
    np.testing.assert_allclose(tri.mean(axis=0), dense.mean(axis=0), rtol=0.03)
    assert tri[:, 0].std() == pytest.approx(dense[:, 0].std(), rel=0.1)
    scaled = nulls.laguerre_eigenvalues(d, dof, rng, trace=7.0)
    assert scaled.sum() == pytest.approx(7.0, rel=1e-12) and np.all(np.diff(scaled) <= 0)
    with pytest.raises(OptionError):
        nulls.laguerre_eigenvalues(d, d - 1, rng)


def test_single_pooled_term_uses_the_tridiagonal_model(monkeypatch):
    # One pooled term of dof >= d (the large case): drawn by the tridiagonal model, trace exact.
    monkeypatch.setattr(nulls, "_EXACT_FLOPS", 0)
    calls = []
    original = nulls.laguerre_eigenvalues
    monkeypatch.setattr(nulls, "laguerre_eigenvalues", lambda *a, **k: calls.append(a) or original(*a, **k))
    energies = np.full(40, 2.0)
    eig = nulls.null_eigenvalues(nulls.dense_null_spec(energies, 16, 30), draws=3, seed=0)
    assert eig.shape == (3, 16) and len(calls) == 3 and calls[0][:2] == (16, 1200)
    np.testing.assert_allclose(eig.sum(axis=1), energies.sum(), rtol=1e-10)
