"""Per-model energies, coordinates, k(tau) and model-mode scores against explicit float64 numpy.

Tolerance: 1e-10 absolute on energies in [0, 1] and 1e-9 relative on coordinates (float64 run).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import k_table
from explorer.engine.dense import decompose
from explorer.engine.options import SpectralOptions
from explorer.metrics.passes import compute_metrics
from explorer.metrics.results import MetricsOptions, energy_at
from tests.helpers import centered_sides, reference_gram, reference_spectrum, unfolding

TOL = 1e-10


def _family(n=7, m=9, k=6, seed=0, scale_spread=True):
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((m, k)) * (1 + i if scale_spread else 1) + 0.5 for i in range(n)]
    return ws


def _run(ws, mode, center, mopts=MetricsOptions(null_draws=2), progress=None):
    so = SpectralOptions(mode=mode, center=center, device="cpu")
    opener = lambda: (torch.from_numpy(w) for w in ws)  # noqa: E731
    sp = decompose(opener(), len(ws), ws[0].shape, so)
    met = compute_metrics(opener, len(ws), ws[0].shape, sp.basis, so, mopts, progress=progress)
    return sp, met


@pytest.mark.parametrize("mode", ["out", "in"])
@pytest.mark.parametrize("center", ["none", "model", "vector"])
def test_energies_and_coordinates_match_numpy(mode, center):
    ws = _family()
    sp, met = _run(ws, mode, center)
    xs = centered_sides(ws, mode, center)
    # Reference bases from an explicit SVD of the two unfoldings of the centered matrices.
    u = reference_spectrum(ws, mode, center)[1]
    v = reference_spectrum([x.T for x in xs], "out")[1]
    assert np.allclose(np.abs(sp.basis.T @ u[:, : sp.basis.shape[1]]).max(axis=1), 1, atol=1e-8)
    kk = met.energy_one.shape[1]
    for i, x in enumerate(xs):
        tot = (x**2).sum()
        assert met.norms2[i] == pytest.approx(tot, rel=1e-12)
        one = np.array([((u[:, :k].T @ x) ** 2).sum() / tot for k in range(1, kk + 1)])
        np.testing.assert_allclose(met.energy_one[i], one, atol=TOL)
        k2 = met.energy_two.shape[1]
        two = np.array([((u[:, :k].T @ x @ v[:, :k]) ** 2).sum() / tot for k in range(1, k2 + 1)])
        np.testing.assert_allclose(met.energy_two[i], two, atol=TOL)
        # Coordinates C_i = U_out^T W_i V_in with the engine's own (sign-fixed) bases.
        kc = int(np.sqrt(met.coords.shape[1]))
        ub, vb = torch.as_tensor(sp.basis), torch.as_tensor(met.other_basis)
        core = (ub[:, :kc].T @ torch.as_tensor(x) @ vb[:, :kc]).numpy()
        expect = core if mode == "out" else core.T
        np.testing.assert_allclose(met.coords[i], expect.reshape(-1), rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(met.energy_one, axis=1) >= -1e-12)
    assert np.all(met.energy_two <= met.energy_one[:, : met.energy_two.shape[1]] + 1e-12)
    # The full basis captures everything.
    if kk == xs[0].shape[0]:
        np.testing.assert_allclose(met.energy_one[:, -1], 1.0, atol=1e-10)


@pytest.mark.parametrize("center", ["none", "model"])
def test_model_mode_curves_and_scores(center):
    ws = _family(n=8, m=5, k=4)
    sp, met = _run(ws, "model", center)
    x = unfolding(ws, "model", center)
    uu, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(met.kernel, reference_gram(ws, "model", center), rtol=1e-12, atol=1e-9)
    for i in range(len(ws)):
        tot = (x[i] ** 2).sum()
        ref = np.cumsum((x[i] @ vt.T) ** 2) / tot
        np.testing.assert_allclose(met.energy_one[i], ref[: met.energy_one.shape[1]], atol=TOL)
    # Centering leaves one zero direction, whose score is rounding noise: compare the others.
    k = min(met.scores.shape[1], int((s > 1e-8 * s[0]).sum()))
    np.testing.assert_allclose(np.abs(met.scores[:, :k]), np.abs(uu[:, :k] * s[:k]), atol=1e-9)


def test_kernel_scores_in_side_modes_match_numpy():
    ws = _family(n=5, m=4, k=3)
    _, met = _run(ws, "out", "model")
    kernel = reference_gram(centered_sides(ws, "out", "model"), "model")
    np.testing.assert_allclose(met.kernel, kernel, rtol=1e-12, atol=1e-10)


def test_k_table_matches_spectrum():
    ws = _family(n=10, m=12, k=8, seed=3)
    sp, _ = _run(ws, "out", "none", MetricsOptions(folds=0, loo="off", null_draws=0))
    table = k_table(sp.cumulative)
    assert set(table) == {"0.5", "0.8", "0.9", "0.95", "0.99"}
    for tau, k in table.items():
        assert k == sp.k_at(float(tau))
        assert sp.cumulative[k - 1] >= float(tau) - 1e-12
        assert k == 1 or sp.cumulative[k - 2] < float(tau)


def test_energy_at_lookup_and_bounds():
    curves = np.array([[0.1, 0.5, 1.0], [0.2, 0.3, 0.9]])
    np.testing.assert_array_equal(energy_at(curves, 2), [0.5, 0.3])
    with pytest.raises(OptionError, match="k must lie in 1..3"):
        energy_at(curves, 4)


def test_progress_called_once_per_model_per_pass():
    ws = _family(n=5)
    calls = []
    _run(ws, "out", "none", progress=lambda d, t, label: calls.append((d, t, label)))
    labels = sorted({c[2] for c in calls})
    assert len(labels) == 2
    for label in labels:
        assert [c[0] for c in calls if c[2] == label] == [1, 2, 3, 4, 5]


def test_metrics_options_validation():
    with pytest.raises(OptionError, match="folds"):
        MetricsOptions(folds=1)
    with pytest.raises(OptionError, match="loo"):
        MetricsOptions(loo="maybe")
    with pytest.raises(OptionError, match="k_coord"):
        MetricsOptions(k_coord=0)


def test_memory_budget_skips_with_notes():
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((400, 400)) for _ in range(3)]
    labels = [{"group": g} for g in "aab"]
    so = SpectralOptions(device="cpu", k_store=4)
    opener = lambda: (torch.from_numpy(w) for w in ws)  # noqa: E731
    sp = decompose(opener(), 3, (400, 400), so)
    met = compute_metrics(opener, 3, (400, 400), sp.basis, so, MetricsOptions(max_memory_mb=1, null_draws=2), labels)
    text = " ".join(met.notes)
    for phrase in ("k-fold coverage skipped", "group angles skipped", "two-sided energies"):
        assert phrase in text
    assert met.heldout.kfold is None and met.energy_two is None and met.coords is None and met.groups is None
    assert met.null is not None and met.null.draws == 2 and 0 < met.mp_edge_evr < 1  # never skipped: cut to a budget
    assert met.energy_one.shape == (3, 4)


def test_model_mode_kernel_by_slices_equals_stack():
    # max_memory_mb=1 forces the row-block passes for a 6 x 200x200 family (1.9 MiB stacked).
    rng = np.random.default_rng(6)
    ws = [rng.standard_normal((200, 200)) for _ in range(6)]
    calls = []
    _, sliced = _run(ws, "model", "none", MetricsOptions(max_memory_mb=1, null_draws=0),
                     progress=lambda d, t, label: calls.append((label, d, t)))
    np.testing.assert_allclose(sliced.kernel, reference_gram(ws, "model"), rtol=1e-12)
    assert any("row-blocks" in label and d == 2 and t > 1 for label, d, t in calls)
