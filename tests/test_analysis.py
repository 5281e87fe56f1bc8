"""The analysis pipeline: spectrum + metrics + baselines in one result, JSON, and the LoRA dW path."""
from __future__ import annotations

import json
from functools import reduce

import numpy as np
import pytest
import torch

from explorer.catalog.views import FactorStream
from explorer.core.errors import OptionError
from explorer.core.linalg import TAUS
from explorer.engine.dense import decompose
from explorer.engine.options import SpectralOptions
from explorer.metrics import null_spec
from explorer.metrics.passes import compute_metrics
from explorer.metrics.results import MetricsOptions
from explorer.pipeline.analyze import _spectrum, analyze
from explorer.pipeline.result import Analysis
from explorer.sources.resolve import load_family


@pytest.fixture
def fam(family_factory):
    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.standard_normal((10, 2)))[0]
    mats = {f"m{i}": {"layers.0.weight": u @ rng.standard_normal((2, 7)) + 0.01 * rng.standard_normal((10, 7))}
            for i in range(6)}
    labels = {f"m{i}": {"task": f"t{i % 3}"} for i in range(6)}
    return load_family(str(family_factory("fam", mats, labels)))


@pytest.mark.parametrize("mode", ["out", "in", "model"])
def test_analyze_holds_everything(fam, mode):
    a = analyze(fam, "layers.0", options=SpectralOptions(mode=mode, device="cpu"),
                metrics=MetricsOptions(folds=3, null_draws=3))
    assert isinstance(a, Analysis) and a.view == "full"
    assert list(a.k_at()) == [str(t) for t in TAUS]
    met = a.metrics
    n = len(fam)
    assert met.energy_one.shape[0] == n and met.heldout.kfold.shape == met.energy_one.shape
    assert met.heldout.loo is not None  # loo=auto is cheap here
    assert met.null.cum_median.shape == a.spectrum.eigenvalues.shape
    assert 0 < met.mp_edge_evr <= 1
    d = len(a.spectrum.eigenvalues)
    np.testing.assert_allclose(a.random_subspace()[:3], np.arange(1, 4) / d)
    np.testing.assert_array_equal(a.energy_at(1, "kfold"), met.heldout.kfold[:, 0])
    doc = json.loads(json.dumps(a.to_json()))
    assert doc["schema"] == "subspace-explorer/analysis/1"
    assert len(doc["metrics"]["energy_one_mean"]) == met.energy_one.shape[1]
    if mode != "model":
        assert met.groups.names == ["t0", "t1", "t2"] and met.groups.overlap.shape == (3, 3)
        assert met.coords.shape == (n, min(8, met.energy_two.shape[1]) ** 2)
        # The planted rank-2 output space is shared: held-out coverage at k=2 is high.
        if mode == "out":
            assert a.energy_at(2, "kfold").min() > 0.98


def test_spectrum_only_and_bad_energy_kind(fam):
    a = analyze(fam, "layers.0", metrics=None)
    assert a.metrics is None and "metrics" not in a.to_json()
    with pytest.raises(OptionError, match="not computed"):
        a.energy_at(1)
    b = analyze(fam, "layers.0", metrics=MetricsOptions(folds=0, loo="off", null_draws=0))
    with pytest.raises(OptionError, match="not one of"):
        b.energy_at(1, "three")
    with pytest.raises(OptionError, match="not computed"):
        b.energy_at(1, "kfold")


def _lora(n=6, m=12, r=2, k=9, seed=0):
    rng = np.random.default_rng(seed)
    return [(torch.from_numpy(rng.standard_normal((m, r))), torch.from_numpy(rng.standard_normal((r, k))), 0.5 + i)
            for i in range(n)]


def test_factor_stream_matches_dense(monkeypatch):
    factors = _lora()
    stream = FactorStream((12, 9), len(factors), (2,) * len(factors), lambda: iter(factors))
    so = SpectralOptions(device="cpu")
    sp = _spectrum(stream, so, None)
    dense = [s * (b @ a) for b, a, s in factors]
    ref = decompose(iter(dense), len(dense), (12, 9), so)
    np.testing.assert_allclose(sp.eigenvalues, ref.eigenvalues, rtol=1e-9, atol=1e-9 * ref.eigenvalues[0])
    met = compute_metrics(stream.dense().open, len(factors), (12, 9), sp.basis, so,
                          MetricsOptions(null_draws=3), null_ranks=stream.ranks)
    # The null uses rank-2 Gaussian factors: its Marchenko-Pastur q is N * r, not N * n (with equal
    # strengths the edge is (sqrt(12) + sqrt(12))^2 / (12 * 12); these adapters' differ, which moves it out).
    spec = null_spec.factored_null_spec(met.norms2, 12, 9, np.array(stream.ranks))
    assert spec.dof.sum() == 12 and met.mp_edge_evr == pytest.approx(null_spec.mp_edge_evr(spec), rel=1e-12)
    equal = null_spec.factored_null_spec(np.ones(6), 12, 9, np.full(6, 2))
    assert null_spec.mp_edge_evr(equal) == pytest.approx((np.sqrt(12) + np.sqrt(12)) ** 2 / (12 * 12))
    assert met.mp_edge_evr > null_spec.mp_edge_evr(equal)
    w = dense[0].numpy()
    u = sp.basis
    np.testing.assert_allclose(met.energy_one[0], np.cumsum(((u.T @ w) ** 2).sum(axis=1)) / (w**2).sum(), atol=1e-10)


@pytest.mark.parametrize("mode", ["out", "in", "model"])
@pytest.mark.parametrize("center", ["none", "model"])
def test_factored_metrics_equal_dense_metrics(mode, center):
    # Mixed ranks, large enough that every training Gram is full rank (no ambiguous null space).
    rng = np.random.default_rng(4)
    factors = [(torch.from_numpy(rng.standard_normal((11, r))), torch.from_numpy(rng.standard_normal((r, 8))), 0.7 + i)
               for i, r in enumerate([4, 5, 4, 3, 5, 4, 4])]
    dense = [s * (b @ a) for b, a, s in factors]
    so = SpectralOptions(mode=mode, center=center, device="cpu")
    sp = decompose(iter(dense), len(dense), (11, 8), so)
    mo = MetricsOptions(folds=3, loo="on", null_draws=0, k_angles=2)
    fm = compute_metrics(lambda: iter(factors), len(factors), (11, 8), sp.basis, so, mo)
    dm = compute_metrics(lambda: iter(dense), len(dense), (11, 8), sp.basis, so, mo)
    for name in ("norms2", "energy_one", "energy_two", "coords", "heldout.kfold", "heldout.loo",
                 "heldout.mean_kfold_captured", "heldout.mean_loo_error", "kernel", "overlaps.own"):
        a, b = _part(fm, name), _part(dm, name)
        if b is None:
            assert a is None, name
            continue
        np.testing.assert_allclose(a, b, atol=1e-9, rtol=1e-9, err_msg=name)


def _part(metrics, path: str):
    """``metrics.heldout.kfold`` for ``"heldout.kfold"``; None when a part is absent."""
    return reduce(lambda obj, name: None if obj is None else getattr(obj, name), path.split("."), metrics)


def test_spectrum_is_heard_before_the_metrics(fam, tmp_path):
    """``on_spectrum`` gets the decomposed spectrum once, before the metrics run (the app's preview),
    and equals the result's; a cache hit computes nothing and calls nothing."""
    from explorer.pipeline.analyze import analyze_cached
    from explorer.pipeline.cache import ResultCache

    events: list = []
    heard: list = []

    def progress(done, total, label):
        events.append(label)

    def on_spectrum(sp):
        heard.append(sp)
        events.append("spectrum")

    cache = ResultCache(tmp_path / "results")
    opts = MetricsOptions(folds=3, null_draws=3)
    a = analyze_cached(fam, "layers.0", None, SpectralOptions(device="cpu"), opts, progress=progress, cache=cache,
                       on_spectrum=on_spectrum)
    assert len(heard) == 1
    np.testing.assert_array_equal(heard[0].eigenvalues, a.spectrum.eigenvalues)
    np.testing.assert_array_equal(heard[0].basis, a.spectrum.basis)
    # Heard after the first pass and before the second (the metrics' own pass over the models).
    assert 0 < events.index("spectrum") < len(events) - 1
    b = analyze_cached(fam, "layers.0", None, SpectralOptions(device="cpu"), opts, cache=cache,
                       on_spectrum=on_spectrum)
    assert b.from_cache and len(heard) == 1
    # Without metrics there is nothing to wait for: no call.
    analyze(fam, "layers.0", metrics=None, on_spectrum=on_spectrum)
    assert len(heard) == 1


def test_costly_null_draws_report_progress(monkeypatch):
    from explorer.metrics import baselines, null_draws

    spec = null_spec.dense_null_spec(np.full(6, 40.0), 10, 4)
    calls: list = []
    baselines.null_band(spec, 7, progress=lambda *c: calls.append(c))
    assert calls == []  # cheap draws: no per-draw updates
    monkeypatch.setattr(null_draws, "PROGRESS_FLOPS", 0.0)
    baselines.null_band(spec, 7, progress=lambda *c: calls.append(c))
    assert calls == [(t, 7, "Gaussian null draws") for t in range(1, 8)]
