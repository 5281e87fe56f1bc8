"""The strength-matched Gaussian null: its law, its band's coverage on data drawn from the null,
model-order independence, its Marchenko-Pastur edge, and the draw budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.core.errors import OptionError
from explorer.metrics import baselines as nulls
from explorer.metrics import null_draws
from explorer.metrics import null_spec
from tests.helpers import reference_gram


def _centre(xs: np.ndarray, center: str) -> np.ndarray:
    """The data's centring, written out (N x d x e)."""
    if center == "model":
        return xs - xs.mean(axis=0)
    if center == "vector":
        return xs - xs.mean(axis=(0, 2))[:, None]
    return xs


def _gaussian_family(seed: int, n: int, d: int, e: int, loud_first: bool, shift: float = 3.0) -> np.ndarray:
    """Pure Gaussian models of unequal strengths (one 4x louder), plus a shared mean ``shift``."""
    rng = np.random.default_rng(seed)
    sig = rng.uniform(0.5, 1.5, n)
    sig[0 if loud_first else -1] *= 4.0
    return np.stack([s * rng.standard_normal((d, e)) for s in sig]) + shift


def _spectrum(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ev = np.linalg.eigvalsh(np.einsum("nij,nkj->ik", xc, xc))[::-1]
    evr = ev / ev.sum()
    return evr, np.cumsum(evr)


def test_bartlett_wishart_moments():
    # E[W] = dof * I and Var[W_ij] = dof (i != j) for W ~ W_d(dof, I): 3 % tolerance at 4000 draws.
    rng = np.random.default_rng(0)
    d, dof, draws = 4, 9, 4000
    ws = np.stack([null_draws.bartlett(d, dof, rng) for _ in range(draws)])
    np.testing.assert_allclose(ws.mean(axis=0), dof * np.eye(d), atol=0.3)
    assert ws[:, 0, 1].var() == pytest.approx(dof, rel=0.1)
    assert ws[:, 2, 2].var() == pytest.approx(2 * dof, rel=0.1)


def test_null_matches_explicit_gaussian_matrices():
    # Median top-EVR of the Wishart-factor null vs generating the N Gaussian matrices directly.
    rng = np.random.default_rng(1)
    n, d, e = 6, 10, 17
    energies = rng.uniform(1, 5, n)
    spec = null_spec.dense_null_spec(energies, d, e)
    eig = null_draws.null_eigenvalues(spec, draws=400, seed=3)
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
    # Norm-exact: every draw's trace is the family's energy (to float32 rounding, 1e-5).
    np.testing.assert_allclose(eig.sum(axis=1), energies.sum(), rtol=1e-5)


@pytest.mark.parametrize("n, widths", [(6, None), (2, None), (5, [3, 1, 2, 3, 2])])
def test_staircase_draws_have_the_law_of_gaussian_matrices(n, widths):
    # Models narrower than d are drawn as a staircase (Bartlett's R for the first d columns): its
    # spectrum must have the law of the N Gaussian matrices themselves, each at exactly its norm,
    # for width >= d (6 x 3 = 18 > 10), width < d (6 < 10) and padded factors of mixed rank.
    # Two-sample Kolmogorov-Smirnov on 3000 draws each, per eigenvalue (top, middle, smallest
    # nonzero), p > 1e-3 (fixed seeds: the test is deterministic).
    import scipy.stats

    rng = np.random.default_rng(5)
    d, e = 10, 3
    energies = rng.uniform(1, 5, n)
    wid = np.full(n, e) if widths is None else np.asarray(widths)
    spec = null_spec.dense_null_spec(energies, d, e, widths=None if widths is None else wid)
    y, upper = null_draws._raw_factor(spec, np.random.default_rng([9, 0]))
    assert upper == min(d, int(wid.sum())) and np.allclose(np.tril(y[:, :upper], -1), 0)
    eig = null_draws.null_eigenvalues(spec, draws=3000, seed=11, dtype=torch.float64)
    np.testing.assert_allclose(eig.sum(axis=1), energies.sum(), rtol=1e-5)   # norm-exact
    direct = np.zeros((3000, d))
    for t in range(3000):
        xs = [x * np.sqrt(en) / np.linalg.norm(x) for en, x in
              ((en, rng.standard_normal((d, w))) for en, w in zip(energies, wid))]
        direct[t] = np.linalg.eigvalsh(reference_gram(xs, "out"))[::-1]
    rank = min(d, int(wid.sum()))
    for j in (0, rank // 2, rank - 1):
        assert scipy.stats.ks_2samp(eig[:, j], direct[:, j]).pvalue > 1e-3, j


def test_order_statistic_band_has_its_stated_coverage():
    # n = 19 draws: [min, max] holds a new draw with probability exactly 18/20; n = 100: order
    # statistics 5 and 96, 91/101.  20000 replications: binomial sd 0.002, tolerance 0.01.
    rng = np.random.default_rng(2)
    for n, expected in ((19, 0.9), (100, 91 / 101)):
        a = rng.standard_normal((n + 1, 20000))
        _, lo, hi, cov, how = nulls.band_limits(a[:n])
        assert cov == pytest.approx(expected) and "order statistics" in how
        assert np.mean((a[n] >= lo) & (a[n] <= hi)) == pytest.approx(expected, abs=0.01)
    # Fewer than 19 draws: the t prediction interval, 90 % for Gaussian columns.
    a = rng.standard_normal((6, 20000))
    _, lo, hi, cov, how = nulls.band_limits(a[:5] + 10.0)
    assert cov == 0.9 and how.startswith("t prediction")
    assert np.mean((a[5] + 10 >= lo) & (a[5] + 10 <= hi)) == pytest.approx(0.9, abs=0.01)
    _, lo, hi, cov, _ = nulls.band_limits(a[:1])
    assert cov == 0.0 and np.array_equal(lo, hi)


@pytest.mark.parametrize("center", ["none", "model", "vector"])
def test_band_covers_ninety_percent_of_gaussian_families(center):
    # Data drawn from the null (unequal strengths, one loud model, first or last; a shared mean that
    # centring removes): the band holds the data's EVR at components 1, 2, 5 and the cumulative
    # at 4 in about 90 % of families.  80 families x 4 checks: sd ~0.02 on the mean; tolerance 0.07.
    inside = []
    for seed in range(80):
        xs = _gaussian_family(seed, n=10, d=12, e=6, loud_first=seed % 2 == 0, shift=3.0 if center != "none" else 0.0)
        xc = _centre(xs, center)
        evr, cum = _spectrum(xc)
        band = nulls.null_band(null_spec.dense_null_spec((xc**2).sum(axis=(1, 2)), 12, 6, center), 39, seed + 1000)
        assert band.coverage == pytest.approx(36 / 40)
        checks = [(evr[j], band.evr_lo[j], band.evr_hi[j]) for j in (0, 1, 4)] + [(cum[3], band.cum_lo[3], band.cum_hi[3])]
        inside.append([lo <= v <= hi for v, lo, hi in checks])
    assert np.mean(inside) == pytest.approx(0.9, abs=0.07)


@pytest.mark.parametrize("center", ["none", "model", "vector"])
def test_null_does_not_depend_on_model_order(center):
    xs = _gaussian_family(5, n=9, d=10, e=5, loud_first=True)
    first = _centre(xs, center)
    last = _centre(xs[::-1], center)
    b1 = nulls.null_band(null_spec.dense_null_spec((first**2).sum(axis=(1, 2)), 10, 5, center), 40, 0)
    b2 = nulls.null_band(null_spec.dense_null_spec((last**2).sum(axis=(1, 2)), 10, 5, center), 40, 0)
    # The same draws: equal up to the rounding of the centred norms (summed in another order).
    np.testing.assert_allclose(b1.evr_median, b2.evr_median, rtol=1e-12)
    np.testing.assert_allclose(b1.cum_hi, b2.cum_hi, rtol=1e-12)


def test_unequal_strengths_at_lora_size_stay_in_the_band():
    # The audit's case, scaled down: pure Gaussian B factors (d x 16) of log-normal strengths.  An
    # equal-variance pooled null put the data's top EVR far above its band; a matched one holds it.
    rng = np.random.default_rng(11)
    n, d, r = 60, 256, 16
    sig = np.exp(rng.normal(0, 0.8, n))
    xs = np.stack([s * rng.standard_normal((d, r)) for s in sig])
    evr, cum = _spectrum(xs)
    band = nulls.null_band(null_spec.dense_null_spec((xs**2).sum(axis=(1, 2)), d, r), 100, 1)
    assert band.evr_lo[0] <= evr[0] <= band.evr_hi[0]
    assert band.cum_lo[15] <= cum[15] <= band.cum_hi[15]
    pooled = null_spec.dense_null_spec(np.full(n, (xs**2).sum() / n), d, r)
    assert evr[0] > nulls.null_band(pooled, 40, 1).evr_hi[0]  # what equal strengths would claim


def test_centred_draws_keep_each_models_centred_norm():
    # Every drawn model is rescaled after centring to the data's centred norm: trace exact (to the
    # float32 rounding of the draws, 1e-5).
    xs = _gaussian_family(3, n=7, d=9, e=4, loud_first=False)
    for center in ("model", "vector"):
        c = (_centre(xs, center) ** 2).sum(axis=(1, 2))
        eig = null_draws.null_eigenvalues(null_spec.dense_null_spec(c, 9, 4, center), 5, 0)
        np.testing.assert_allclose(eig.sum(axis=1), c.sum(), rtol=1e-5)
    ranks = np.array([2, 3, 3, 4, 2])
    c = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    for center in ("none", "model", "vector"):
        eig = null_draws.null_eigenvalues(null_spec.factored_null_spec(c, 8, 6, ranks, center), 4, 0)
        np.testing.assert_allclose(eig.sum(axis=1), c.sum(), rtol=1e-5)


def test_centred_factored_gram_matches_the_dense_products():
    # The factored expansion sum a_i^2 (X_i - Z)(X_i - Z)^T against forming the products densely.
    spec = null_spec.factored_null_spec(np.array([1.0, 2.0, 3.0, 0.7]), 7, 5, np.array([2, 2, 3, 1]), "model")
    g = null_draws._centred_factored_gram(spec, np.random.default_rng([4, 0]), torch.float64).numpy()
    rng = np.random.default_rng([4, 0])
    xs, targets = [], []
    for f in np.unique(spec.dof):  # the draw's order: models of one rank in one batch
        idx = np.flatnonzero(spec.dof == f)
        b = np.sqrt(spec.weights[idx])[:, None, None] * rng.standard_normal((len(idx), 7, int(f)))
        xs.extend(b @ rng.standard_normal((len(idx), int(f), 5)))
        targets.extend(spec.targets[idx])
    xc = np.stack(xs) - np.mean(xs, axis=0)
    xc *= np.sqrt(np.array(targets) / (xc**2).sum(axis=(1, 2)))[:, None, None]
    np.testing.assert_allclose(g, np.einsum("nij,nkj->ik", xc, xc), rtol=1e-10, atol=1e-12)


def test_method_of_moments_energies_are_unbiased():
    # E_i estimated from centred norms: mean over 2000 families within 2 % of the true sigma_i^2 d e
    # (200 entries per model, so the clipping of negative estimates at 0 never acts).
    rng = np.random.default_rng(6)
    sig = np.array([0.5, 1.0, 1.0, 2.0, 3.0])
    for center in ("model", "vector"):
        est = np.mean([null_spec.raw_energies((_centre(sig[:, None, None] * rng.standard_normal((5, 20, 10)), center) ** 2)
                                               .sum(axis=(1, 2)), center, np.full(5, 10)) for _ in range(2000)], axis=0)
        np.testing.assert_allclose(est, sig**2 * 200, rtol=0.02)
    np.testing.assert_allclose(null_spec.raw_energies(np.array([2.0, 2.0]), "model", np.full(2, 3)), [4.0, 4.0])


def test_float32_draws_match_float64():
    # Same samples, products and eigenvalues in float32: EVR within 1e-5 of the top EVR.
    spec = null_spec.dense_null_spec(np.linspace(1, 4, 30), 64, 16)
    e64 = null_draws.null_eigenvalues(spec, 3, 0, dtype=torch.float64)
    e32 = null_draws.null_eigenvalues(spec, 3, 0, dtype=torch.float32)
    evr = lambda e: e / e.sum(axis=1, keepdims=True)  # noqa: E731
    assert np.abs(evr(e32) - evr(e64)).max() < 1e-5 * evr(e64)[:, 0].min()


def test_mp_edge_equal_and_unequal_strengths():
    # Equal norms: (sqrt(d) + sqrt(q))^2 / (d q).  Two strengths (1 and 6, half the models each):
    # Silverstein's edge against the median sampled top eigenvalue, d = 150, q = 1200: within 4 %.
    spec = null_spec.dense_null_spec(np.full(30, 7.0), 64, 4)
    assert null_spec.mp_edge_evr(spec) == pytest.approx((8 + np.sqrt(120)) ** 2 / (64 * 120), rel=1e-9)
    energies = np.repeat([1.0, 6.0], 150)
    spec = null_spec.dense_null_spec(energies, 150, 4)
    eig = null_draws.null_eigenvalues(spec, 8, 1)
    top = np.median(eig[:, 0] / eig.sum(axis=1))
    assert top == pytest.approx(null_spec.mp_edge_evr(spec), rel=0.04)
    equal = null_spec.mp_edge_evr(null_spec.dense_null_spec(np.full(300, 3.5), 150, 4))
    assert null_spec.mp_edge_evr(spec) > 1.1 * equal  # unequal strengths push the edge out


def test_centred_mp_edge_removes_one_model_not_the_first():
    # Model centring: the edge's terms are the eigenvalues of D J D, one of them 0, whichever
    # model is loud; the old "dof removed from the first term" depended on order.
    e = np.array([9.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = null_spec.dense_null_spec(e, 40, 8, "model")
    b = null_spec.dense_null_spec(e[::-1].copy(), 40, 8, "model")
    assert null_spec.mp_edge_evr(a) == pytest.approx(null_spec.mp_edge_evr(b), rel=1e-12)
    assert a.mp_dof.sum() == 5 * 8


def test_draw_budget_and_errors():
    big = null_spec.dense_null_spec(np.ones(500), 4096, 16)
    assert nulls.affordable_draws(big, 100) == nulls.MIN_DRAWS
    assert nulls.affordable_draws(big, 3) == 3
    small = null_spec.dense_null_spec(np.ones(20), 16, 8)
    assert nulls.affordable_draws(small, 100) == 100
    with pytest.raises(OptionError, match="draws"):
        null_draws.null_eigenvalues(small, draws=0)
    with pytest.raises(OptionError, match="mixed rank"):
        null_spec.dense_null_spec(np.ones(3), 8, 4, "model", widths=np.array([4, 2, 4]))


def test_padded_factors_use_each_models_rank():
    # Zero-padded B factors of ranks 2 and 8 (padded to 8): each null model has its own rank's dof.
    spec = null_spec.dense_null_spec(np.ones(4), 32, 8, widths=np.array([2, 8, 8, 2]))
    assert sorted(spec.dof.tolist()) == [2, 2, 8, 8] and spec.width == 20
    eig = null_draws.null_eigenvalues(spec, 2, 0)
    assert np.count_nonzero(eig[0] > 1e-12) == 20


def test_factored_and_model_nulls():
    spec = null_spec.factored_null_spec(np.ones(30), 64, 100, np.full(30, 4))
    band = nulls.null_band(spec, draws=20)
    assert band.draws == 20 and np.all(band.cum_lo <= band.cum_hi)
    assert "Gaussian factors of its rank" in band.caption
    mb = nulls.model_null_band(np.linspace(1, 2, 9), mn=500, center=True, draws=30)
    assert mb.evr_median.shape == (9,)
    assert mb.evr_median[-1] == pytest.approx(0.0, abs=1e-10)  # centering removes one direction
    assert np.all(mb.evr_lo <= mb.evr_hi + 1e-15)
    raw = nulls.model_null_band(np.array([1.0, 2.0, 4.0]), mn=50, center=False, draws=3)
    assert raw.cum_median[-1] == pytest.approx(1.0)


def test_band_fields_and_reproducible():
    spec = null_spec.dense_null_spec(np.linspace(1, 3, 12), 16, 20, "model")
    band = nulls.null_band(spec, draws=100, seed=0)
    for lo, med, hi in ((band.evr_lo, band.evr_median, band.evr_hi), (band.cum_lo, band.cum_median, band.cum_hi)):
        assert lo.shape == (16,)
        assert np.all(lo <= med + 1e-15) and np.all(med <= hi + 1e-15)
    assert band.cum_median[-1] == pytest.approx(1.0)
    assert band.draws == band.draws_asked == 100 and band.cum_draws.shape == (100, 16)
    assert band.band_name == "null 90 % band" and "centred on the mean model" in band.caption
    again = nulls.null_band(spec, draws=100, seed=0)
    np.testing.assert_array_equal(band.evr_median, again.evr_median)  # seeded: reproducible


def test_random_subspace_and_errors():
    ks = np.arange(1, 10)
    np.testing.assert_allclose(nulls.random_subspace_expectation(8, ks), np.minimum(ks / 8, 1))
    with pytest.raises(OptionError, match="dimension"):
        nulls.random_subspace_expectation(0, 1)


def test_null_fitted_curve_is_a_per_model_mean_like_the_datas():
    # Unequal strengths: the pooled cumulative EVR weighs loud models more; the per-model fitted curve
    # averages each model's own captured share, as the data's fitted curve does.
    xs = _gaussian_family(9, n=12, d=16, e=6, loud_first=True, shift=0.0)
    evr, cum = _spectrum(xs)
    u = np.linalg.eigh(np.einsum("nij,nkj->ik", xs, xs))[1][:, ::-1]
    data = np.mean([np.cumsum(((u.T @ x) ** 2).sum(axis=1)) / (x**2).sum() for x in xs], axis=0)
    band = nulls.null_band(null_spec.dense_null_spec((xs**2).sum(axis=(1, 2)), 16, 6), 100, 3, k_fitted=16)
    assert band.fitted_draws.shape == (100, 16)
    np.testing.assert_allclose(band.fitted_draws[:, -1], 1.0, atol=1e-5)  # all of R^16 holds every model
    assert np.all(np.diff(band.fitted_draws, axis=1) >= -1e-6)
    med, lo, hi, _, _ = nulls.band_limits(band.fitted_draws)
    assert lo[2] <= data[2] <= hi[2]
    assert abs(med[2] - band.cum_median[2]) > 0.005  # not the pooled curve
