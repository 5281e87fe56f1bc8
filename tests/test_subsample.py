"""Subsampling: k(tau) against N, the overlap with the whole family's basis, the half-sampling band."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import explorer
from explorer.figures import scree_figure, stability_figure
from explorer.metrics.subsample import stability, subsample_sizes
from tests.helpers import trace


def _planted(rng, n, d=20, e=6, k=3, strengths=(6.0, 4.0, 3.0), noise=0.3):
    u = np.linalg.qr(rng.standard_normal((d, k)))[0]
    return [torch.from_numpy(u @ (np.array(strengths)[:, None] * rng.standard_normal((k, e)))
                             + noise * rng.standard_normal((d, e))) for _ in range(n)]


def test_sizes():
    assert subsample_sizes(60) == [5, 10, 20, 40, 60]
    assert subsample_sizes(5) == [5] and subsample_sizes(4) == [4]


def test_planted_subspace_stabilises_and_noise_does_not():
    rng = np.random.default_rng(0)
    st = stability(_planted(rng, 40), "none", k=3, n_components=10)
    assert list(st.sizes) == [5, 10, 20, 40]
    assert np.nanmedian(st.overlap[1]) > 0.95 and st.overlap[-1, 0] == pytest.approx(1.0)
    assert np.isnan(st.k_tau[-1, 1:]).all()  # the whole family: one draw
    noise = [torch.from_numpy(rng.standard_normal((20, 6))) for _ in range(40)]
    sn = stability(noise, "none", k=3, n_components=10)
    assert np.nanmedian(sn.overlap[0]) < 0.6 < np.nanmedian(st.overlap[0])
    # k(0.9) of noise grows with N' (each model adds directions) — the planted one stays put.
    assert np.nanmedian(sn.k_tau[0]) < np.nanmedian(sn.k_tau[-2])


def test_half_sampling_band_covers_the_population_value():
    # 60 families of 30 models from one population; the population's top EVR from a family of 3000.
    # The 5-95 % band should hold it in about 90 % of families (approximate for a ratio: 0.75..1).
    rng = np.random.default_rng(1)
    u = np.linalg.qr(rng.standard_normal((20, 3)))[0]

    def family(n):
        s = rng.uniform(0.5, 3.0, size=(n, 3))
        return [torch.from_numpy(u @ (s[i][:, None] * rng.standard_normal((3, 6))) + 0.8 * rng.standard_normal((20, 6)))
                for i in range(n)]

    big = family(3000)
    g = sum(x @ x.T for x in big).numpy()
    ev = np.linalg.eigvalsh(g)[::-1]
    truth = ev[0] / ev.sum()
    hits = []
    for f in range(60):
        st = stability(family(30), "none", k=3, n_components=5, seed=f)
        hits.append(st.evr_lo[0] <= truth <= st.evr_hi[0])
    assert 0.75 <= np.mean(hits) <= 1.0


def test_analysis_carries_stability_and_figures_draw_it():
    res = explorer.analyze(explorer.load_family("zoo:planted"), "layers.0")
    st = res.metrics.stability
    assert st is not None and st.sizes[-1] == len(res.models)
    assert np.all(st.evr_lo <= st.evr_hi) and np.all(st.k_ci[:, 0] <= st.k_ci[:, 1])
    lo, hi = st.k_ci[list(st.taus).index(0.9)]
    # The planted rank is recovered by every half: k(0.9)'s band is the one value.
    assert lo == hi == res.k_at()["0.9"] and res.to_json()["metrics"]["k_at_ci"]["0.9"] == [int(lo), int(hi)]
    fig = stability_figure(st).to_plotly_json()
    assert trace(fig, "k(0.9)")["x"] is not None and trace(fig, "overlap with all N")
    bars = trace(scree_figure(res.spectrum, ci=(st.evr_lo, st.evr_hi)).to_plotly_json(), "EVR per component")
    assert bars["error_y"]["array"] is not None
