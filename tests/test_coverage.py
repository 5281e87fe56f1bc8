"""Held-out coverage: downdated k-fold / leave-one-out refits equal refitting from scratch.

The scratch reference recomputes each fold's basis by an explicit numpy SVD of the training
models' (training-mean centered) unfolding.  Tolerance: 1e-10 absolute on captured energies (float64).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.core.errors import OptionError
from explorer.engine.dense import decompose
from explorer.engine.options import SpectralOptions
from explorer.metrics.heldout import fold_assignment, kernel_heldout, mean_only
from explorer.metrics.passes import compute_metrics
from explorer.metrics.results import MetricsOptions
from tests.helpers import center_offset, reference_spectrum, unfolding

TOL = 1e-10


def _run(ws, mode, center, mopts):
    so = SpectralOptions(mode=mode, center=center, device="cpu")
    opener = lambda: (torch.from_numpy(w) for w in ws)  # noqa: E731
    sp = decompose(opener(), len(ws), ws[0].shape, so)
    return compute_metrics(opener, len(ws), ws[0].shape, sp.basis, so, mopts)


def _scratch_curve(train, test_x, center, kk):
    """Captured-energy curve of one held-out side matrix by the basis refitted on ``train``."""
    u = reference_spectrum(train, "out", center)[1]
    x = test_x - center_offset(train, center)
    tot = (x**2).sum()
    return np.array([((u[:, :k].T @ x) ** 2).sum() / tot for k in range(1, kk + 1)])


def _family(n=9, m=7, e=5, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((m, e)) * (1 + 0.3 * i) + 0.4 for i in range(n)]


@pytest.mark.parametrize("mode", ["out", "in"])
@pytest.mark.parametrize("center", ["none", "model", "vector"])
def test_kfold_and_loo_equal_scratch(mode, center):
    ws = _family()
    met = _run(ws, mode, center, MetricsOptions(folds=3, loo="on", null_draws=0, seed=5))
    xs = [w if mode == "out" else w.T for w in ws]
    kk = met.heldout.kfold.shape[1]
    assert kk == xs[0].shape[0]
    np.testing.assert_array_equal(met.heldout.folds, fold_assignment(len(ws), 3, 5))
    for i, x in enumerate(xs):
        train = [xs[j] for j in range(len(xs)) if met.heldout.folds[j] != met.heldout.folds[i]]
        np.testing.assert_allclose(met.heldout.kfold[i], _scratch_curve(train, x, center, kk), atol=TOL)
        loo = [xs[j] for j in range(len(xs)) if j != i]
        np.testing.assert_allclose(met.heldout.loo[i], _scratch_curve(loo, x, center, kk), atol=TOL)
        # Mean-only baseline: raw W_i against the held-out models' mean.
        mu = sum(loo) / len(loo)
        cap = (x * mu).sum() ** 2 / ((mu**2).sum() * (x**2).sum())
        assert met.heldout.mean_loo_captured[i] == pytest.approx(cap, abs=TOL)
        assert met.heldout.mean_loo_error[i] == pytest.approx(np.linalg.norm(x - mu) / np.linalg.norm(x), abs=TOL)
        muf = sum(train) / len(train)
        assert met.heldout.mean_kfold_error[i] == pytest.approx(np.linalg.norm(x - muf) / np.linalg.norm(x), abs=TOL)


@pytest.mark.parametrize("center", ["none", "model"])
def test_model_mode_heldout_equals_scratch(center):
    ws = _family(n=8, m=4, e=3)
    met = _run(ws, "model", center, MetricsOptions(folds=4, loo="on", null_draws=0))
    x = unfolding(ws, "model")
    kk = met.heldout.loo.shape[1]
    for i in range(len(ws)):
        tr = np.delete(x, i, axis=0)
        mu = center_offset(tr, center)  # the training models' mean row
        _, s, vt = np.linalg.svd(tr - mu, full_matrices=False)
        vt = vt[s > 1e-10 * s[0]]
        y = x[i] - mu
        ref = np.cumsum((vt @ y) ** 2) / (y**2).sum()
        ref = np.concatenate([ref, np.full(kk - len(ref), ref[-1])])[:kk]
        np.testing.assert_allclose(met.heldout.loo[i], ref, atol=TOL)


def test_kernel_heldout_direct():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 20))
    k = x @ x.T
    out = kernel_heldout(k, np.arange(4), np.array([4, 5]), 3, "none")
    vt = np.linalg.svd(x[:4], full_matrices=False)[2]
    for row, j in zip(out, (4, 5)):
        np.testing.assert_allclose(row, np.cumsum((vt[:3] @ x[j]) ** 2) / (x[j] ** 2).sum(), atol=TOL)


def test_mean_only_direct():
    x = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    cap, err = mean_only(x, x)
    assert cap == pytest.approx(1.0) and err == pytest.approx(0.0)
    cap, err = mean_only(x, torch.zeros_like(x))
    assert cap == 0.0 and err == pytest.approx(1.0)


def test_fold_assignment_balanced_and_seeded():
    f = fold_assignment(11, 4, seed=2)
    assert sorted(np.bincount(f).tolist()) == [2, 3, 3, 3]
    np.testing.assert_array_equal(f, fold_assignment(11, 4, seed=2))
    assert fold_assignment(3, 10).max() == 2
    with pytest.raises(OptionError, match="at least 2 models"):
        fold_assignment(1, 2)


def test_planted_coverage_high_and_gaussian_null_low():
    rng = np.random.default_rng(7)
    m, e, k, n = 40, 30, 3, 20
    u = np.linalg.qr(rng.standard_normal((m, k)))[0]
    v = np.linalg.qr(rng.standard_normal((e, k)))[0]
    planted = [u @ rng.standard_normal((k, k)) @ v.T + 0.01 * rng.standard_normal((m, e)) for _ in range(n)]
    noise = [rng.standard_normal((m, e)) for _ in range(n)]
    mo = MetricsOptions(folds=5, loo="on", null_draws=4)
    p = _run(planted, "out", "none", mo)
    g = _run(noise, "out", "none", mo)
    assert p.heldout.kfold[:, k - 1].min() > 0.9
    assert p.heldout.loo[:, k - 1].min() > 0.9
    # Gaussian models: a fitted k-dim subspace captures about k/m of a new model (+ fitting noise).
    assert g.heldout.kfold[:, k - 1].mean() < 2 * k / m
    assert g.heldout.loo[:, k - 1].mean() < 2 * k / m
    # In-sample coverage of the null overfits: it exceeds its held-out coverage.
    assert g.energy_one[:, k - 1].mean() > g.heldout.kfold[:, k - 1].mean()
    # The planted family's curve sits far above the null band; the Gaussian family's within it.
    assert p.energy_one[:, k - 1].mean() > p.null.cum_hi[k - 1] + 0.5
