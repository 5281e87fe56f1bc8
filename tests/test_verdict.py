"""The per-group verdict: planted families judged shared, noise null-like, fine-tunes mostly the
mean; its p-value, Holm's adjustment and the degenerate cases."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import explorer

from explorer.engine.dense import decompose
from explorer.engine.options import SpectralOptions
from explorer.metrics import verdict as vd
from explorer.metrics.passes import compute_metrics
from explorer.metrics.results import MetricsOptions

MO = MetricsOptions(null_draws=100, folds=4)


def _judge(ws, center="none", mopts=MO):
    so = SpectralOptions(mode="out", center=center, device="cpu")
    opener = lambda: (torch.from_numpy(w) for w in ws)  # noqa: E731
    sp = decompose(opener(), len(ws), ws[0].shape, so)
    return vd.judge(sp, compute_metrics(opener, len(ws), ws[0].shape, sp.basis, so, mopts), k=3)


def _planted(rng, n=16, d=40, e=12, k=3, noise=0.05, mean=0.0):
    u = np.linalg.qr(rng.standard_normal((d, k)))[0]
    base = mean * rng.standard_normal((d, e))
    return [base + u @ rng.standard_normal((k, e)) + noise * rng.standard_normal((d, e)) for _ in range(n)]


def test_planted_family_is_shared_and_noise_null_like():
    rng = np.random.default_rng(0)
    v = _judge(_planted(rng))
    assert v.label == "shared" and v.p_value < 1e-6 and any("t tail" in n for n in v.notes)
    assert v.effect > 3 and v.effect_ci[0] <= v.effect <= v.effect_ci[1]
    assert v.heldout_ratio > 0.9 and v.mean_ratio > 2
    assert "strength-matched Gaussian null" in v.summary and "mean-only" in v.summary
    noise = [s * rng.standard_normal((40, 12)) for s in rng.uniform(0.5, 3, 16)]
    v = _judge(noise)
    assert v.label == "null-like" and v.p_value > 0.05 and "does not beat" in v.summary


def test_shared_mean_is_called_mostly_the_mean_and_centring_removes_it():
    # Fine-tune-like: a large shared base plus small planted deviations.
    rng = np.random.default_rng(1)
    ws = _planted(rng, noise=0.05, mean=5.0)
    assert _judge(ws).label == "shared, mostly the mean"
    v = _judge(ws, center="model")
    assert v.label == "shared" and "beyond the mean by construction" in v.summary


def test_fitted_but_not_held_out():
    # Each model its own strong rank-3 structure: the fitted top-3 of the family beats the null (the
    # top directions are some model's), but a held-out model's directions are not in it.
    rng = np.random.default_rng(2)
    ws = [np.linalg.qr(rng.standard_normal((60, 3)))[0] @ rng.standard_normal((3, 12)) * 5
          + 0.1 * rng.standard_normal((60, 12)) for _ in range(8)]
    v = _judge(ws)
    assert v.label == "fitted, not held out" and v.heldout_ratio < vd.HELD_OUT_MIN


def test_p_value_rank_and_t_tail():
    draws = np.linspace(0.1, 0.2, 99)
    assert vd.p_value(0.5, draws) < 1e-6  # beyond every draw: the t tail, below the rank bound 1/100
    assert vd.p_value(0.2001, draws) <= 1 / 100
    assert vd.p_value(0.0, draws) == pytest.approx(1.0)
    assert vd.p_value(0.15, draws) == pytest.approx((1 + 50) / 100)  # ties count as exceeding
    few = np.array([0.10, 0.11, 0.12, 0.09, 0.10])
    assert vd.p_value(0.5, few) < 1e-3 and 0.3 < vd.p_value(0.104, few) < 0.7
    assert np.isnan(vd.p_value(0.5, np.full(3, 0.1)))


def test_holm_matches_its_definition():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    adj = vd.holm(p)
    # Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, running maximum, capped at 1.
    np.testing.assert_allclose(adj[[0, 2, 1, 4]], [0.04, 0.09, 0.09, 0.5])
    assert np.isnan(adj[3])


def test_degenerate_groups_get_notes_not_numbers():
    rng = np.random.default_rng(3)
    one = [rng.standard_normal((10, 4))]
    so = SpectralOptions(mode="out", center="model", device="cpu")
    opener = lambda: (torch.from_numpy(w) for w in one)  # noqa: E731
    sp = decompose(opener(), 1, (10, 4), so)
    met = compute_metrics(opener, 1, (10, 4), sp.basis, so, MO)
    assert any("energy is 0 after centring" in n for n in met.notes) and met.null is None
    v = vd.judge(sp, met)
    assert v.label == "undetermined" and np.isnan(v.p_value) and v.notes
    json.dumps(v.to_json(), allow_nan=False)
    # Two models centred on their mean: each fold would fit one model, i.e. a zero Gram.
    two = [rng.standard_normal((10, 4)) for _ in range(2)]
    opener2 = lambda: (torch.from_numpy(w) for w in two)  # noqa: E731
    sp2 = decompose(opener2(), 2, (10, 4), so)
    met2 = compute_metrics(opener2, 2, (10, 4), sp2.basis, so, MetricsOptions(null_draws=20, folds=2))
    assert met2.heldout is None and any("held-out coverage skipped" in n for n in met2.notes)
    assert "not computed" in " ".join(vd.judge(sp2, met2).notes)


def test_verdict_in_the_analysis_json():
    out = explorer.analyze(explorer.load_family("zoo:planted"), "layers.0").to_json()
    v = out["verdict"]
    assert v["label"].startswith("shared") and v["k"] == 16 and len(v["effect_ci"]) == 2
    json.dumps(out, allow_nan=False)
