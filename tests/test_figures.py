"""Figure builders and the small view helpers, tested without Streamlit on the figure's data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import explorer
from explorer.engine.options import Spectrum
from explorer.figures import (
    accuracy_figure,
    angle_distribution_figure,
    coverage_figure,
    cumulative_overlay_figure,
    embedding_figure,
    layer_heatmap_figure,
    overlap_heatmap_figure,
    scree_figure,
    universal_overlap_figure,
)
from explorer.metrics.random_reference import random_principal_angles
from explorer.present.curves import coverage_curves
from explorer.present.decimate import decimate_curve, decimate_square
from explorer.present.embedding import embed, explained_ratio
from explorer.present.tables import layer_summary
from tests.helpers import decode_plotly, trace


def data(fig) -> dict:
    return decode_plotly(fig.to_plotly_json())


@pytest.fixture(scope="module")
def planted_res():
    return explorer.analyze(explorer.load_family("zoo:planted"), "layers.0")


def test_scree_with_null_band(planted_res):
    m = planted_res.metrics
    fig = data(scree_figure(planted_res.spectrum, 0.9, null=m.null,
                            mp_edge_evr=m.mp_edge_evr))
    med = trace(fig, "null median")["y"]
    np.testing.assert_allclose(med, m.null.evr_median[: len(med)], rtol=1e-12)
    band = trace(fig, m.null.band_name)["y"]
    assert m.null.band_name == "null 90 % band"
    n = len(med)
    np.testing.assert_allclose(band[:n], m.null.evr_hi[:n])
    np.testing.assert_allclose(band[n:], m.null.evr_lo[:n][::-1])
    # The planted directions stand far above the null; the noise directions do not.
    assert planted_res.spectrum.evr[3] > 5 * m.null.evr_hi[3]
    assert planted_res.spectrum.evr[10] < m.null.evr_median[10]


def test_cumulative_overlay_and_heatmap():
    a, b = np.linspace(0.2, 1, 10), np.linspace(0.5, 1, 10)
    fig = data(cumulative_overlay_figure([("a", a), ("b", b)], 0.9, null=("null", np.linspace(0, 1, 10))))
    np.testing.assert_allclose(trace(fig, "b")["y"], b)
    heat = data(layer_heatmap_figure(["a", "b"], np.vstack([a, b]), 0.9))
    z = heat["data"][0]["z"]
    np.testing.assert_allclose(np.asarray(z, dtype=float), np.vstack([a, b]))
    # k(0.9) markers: first index where cumulative >= 0.9, 1-based
    assert list(heat["data"][1]["x"]) == [int(np.argmax(a >= 0.9)) + 1, int(np.argmax(b >= 0.9)) + 1]


def _long_tail(d: int = 3000, trace: float | None = None) -> Spectrum:
    """A few strong components over a long slowly decaying tail: k(0.9) lies far beyond 64."""
    j = np.arange(1, d + 1)
    lam = np.concatenate([[400.0, 150.0, 60.0], 1.0 / j[3:] ** 0.2])
    return Spectrum(lam, np.zeros((d, 1)), "in", "none", 500, (16, d), trace=trace)


def _notes(fig: dict) -> list[str]:
    return [a["text"] for a in fig["layout"].get("annotations", [])]


def test_scree_keeps_the_chosen_components_and_names_a_k_tau_beyond_them():
    sp = _long_tail()
    k = sp.k_at(0.9)
    assert k > 1000
    fig = data(scree_figure(sp, 0.9, max_components=64))
    bars = trace(fig, "EVR per component")
    np.testing.assert_array_equal(bars["x"], np.arange(1, 65))
    np.testing.assert_allclose(bars["y"], sp.evr[:64], rtol=1e-12)
    assert len(trace(fig, "cumulative EVR")["x"]) == 64
    assert list(fig["layout"]["xaxis"]["range"]) == [0.5, 64.5]  # not stretched to k(0.9)
    assert f"k(0.9) = {k} →" in _notes(fig)
    # No vertical line at k(0.9) (it would stretch the axis): only the horizontal tau line.
    assert all(sh.get("x0") != k for sh in fig["layout"].get("shapes", []))
    # Within the axis, k(tau) is the vertical line, as before.
    short = data(scree_figure(sp, 0.5, max_components=200))
    k5 = sp.k_at(0.5)
    assert k5 <= 200 and f"k(0.5) = {k5}" in _notes(short)
    assert any(sh.get("x0") == k5 for sh in short["layout"]["shapes"])
    # A truncated (randomized) spectrum that never reaches tau only bounds k(tau) from below.
    top = _long_tail(d=3000)
    trunc = Spectrum(top.eigenvalues[:256], top.basis[:, :1], "in", "none", 500, (16, 3000), trace=top.total)
    assert "k(0.9) > 256 →" in _notes(data(scree_figure(trunc, 0.9, max_components=64)))


def test_overlay_and_heatmap_name_a_k_tau_beyond_the_components_shown():
    long, short = _long_tail().cumulative, np.linspace(0.5, 1, 40)
    k = int(np.searchsorted(long, 0.9 - 1e-12) + 1)
    fig = data(cumulative_overlay_figure([("long", long), ("short", short)], 0.9, max_components=64))
    assert len(trace(fig, "long")["x"]) == 64 and len(trace(fig, "short")["x"]) == 40
    assert _notes(fig)[-1] == f"long: k(0.9) = {k} →"  # the short curve reaches 0.9 on the axis
    mat = np.ones((2, 64))
    mat[0], mat[1, :40] = long[:64], short
    heat = data(layer_heatmap_figure(["long", "short"], mat, 0.9, k_tau=[k, int(np.argmax(short >= 0.9)) + 1]))
    assert np.asarray(heat["data"][0]["z"]).shape == (2, 64)
    assert list(heat["data"][1]["y"]) == ["short"] and list(heat["data"][1]["x"]) == [int(np.argmax(short >= 0.9)) + 1]
    beyond = heat["data"][2]
    assert list(beyond["y"]) == ["long"] and list(beyond["x"]) == [64] and list(beyond["text"]) == [f"{k} →"]
    # Without the whole curves' k(tau), the marker only says it lies beyond the columns.
    assert list(data(layer_heatmap_figure(["long"], mat[:1], 0.9))["data"][2]["text"]) == ["> 64 →"]


def test_overlap_views(planted_res):
    m = planted_res.metrics
    fig = data(overlap_heatmap_figure(m.overlaps.own, planted_res.models, title="t", expectation=0.1))
    z = np.asarray(fig["data"][0]["z"], dtype=float)
    n = len(planted_res.models)
    assert z.shape == (n, n)
    np.testing.assert_allclose(z, z.T, atol=1e-12)
    assert (z >= 0).all() and (z <= 1 + 1e-12).all()
    ang = data(angle_distribution_figure(m.overlaps.cosines, random_angles=random_principal_angles(64, 8)))
    x = trace(ang, "all angles")["x"]
    assert len(x) == m.overlaps.cosines.size and (x >= 0).all() and (x <= 90).all()
    bars = data(universal_overlap_figure(planted_res.models, m.overlaps.vs_universal, ["g"] * n, expectation=0.1))
    np.testing.assert_allclose(np.sort(bars["data"][0]["y"])[::-1], np.sort(m.overlaps.vs_universal)[::-1])


def test_random_principal_angles_mean_cos2_is_k_over_d():
    ang = random_principal_angles(40, 5, draws=400, seed=1)
    # E[sum cos^2]/k = k/d exactly for Haar subspaces; 400 draws give ~1 % standard error.
    assert np.mean(np.cos(np.radians(ang)) ** 2) == pytest.approx(5 / 40, rel=0.06)


def test_pca_embedding_matches_numpy_and_figure_groups():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    pts = embed(x, "pca", 2)
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(np.abs(pts), np.abs(u[:, :2] * s[:2]), rtol=1e-10, atol=1e-10)
    assert explained_ratio(x, 2).sum() <= 1
    table = pd.DataFrame({"name": [f"m{i}" for i in range(30)], "group": ["a", "b", "c"] * 10})
    fig = data(embedding_figure(pts, table, "group"))
    assert [t["name"] for t in fig["data"]] == ["a", "b", "c"]
    assert sorted(np.concatenate([t["customdata"] for t in fig["data"]]).tolist()) == list(range(30))
    fig3 = data(embedding_figure(embed(x, "pca", 3), table, None))
    assert fig3["data"][0]["type"] == "scatter3d"


def test_coverage_curves_and_figure(planted_res):
    cov = coverage_curves(planted_res)
    m = planted_res.metrics
    np.testing.assert_allclose(cov.curves["fitted (in-sample)"], m.energy_one.mean(0))
    fig = data(coverage_figure(cov.curves, bands=cov.bands, levels=cov.levels))
    fitted = trace(fig, "fitted (in-sample)")["y"]
    np.testing.assert_allclose(fitted, m.energy_one.mean(0)[: len(fitted)])
    k = 4
    held = [c for c in cov.curves if c.startswith("held-out")]
    assert held, cov.curves.keys()
    # planted structure generalizes: held-out models keep most of their energy at the planted k
    assert cov.curves[held[0]][k - 1] > 0.9
    assert cov.curves["random subspace"][k - 1] == pytest.approx(k / 64)
    assert set(cov.table(10).columns) >= {"k", "fitted (in-sample)", "random subspace"}


def test_accuracy_figure():
    fig = data(accuracy_figure(np.array([1, 2, 4]), {"g": np.array([0.2, 0.5, 0.9])}, original={"g": 0.95}, chance=0.1))
    np.testing.assert_allclose(trace(fig, "g")["y"], [0.2, 0.5, 0.9])


def test_layer_summary_row(planted_res):
    row = layer_summary("layers.0", planted_res)
    assert row["k@90%"] == 4 and row["top16 / null"] > 1


def test_decimation_keeps_shape_and_ends():
    labels = [str(i) for i in range(500)]
    mat = np.arange(500 * 500, dtype=float).reshape(500, 500)
    names, sub = decimate_square(labels, mat, 200)
    assert sub.shape == (len(names), len(names)) and len(names) <= 200
    assert names[0] == "0" and names[-1] == "499"
    idx = decimate_curve(np.arange(1000), 100)
    assert idx[0] == 0 and idx[-1] == 999 and len(idx) <= 100


def test_umap_embedding_is_seeded_and_groups_planted_models(umap_points):
    res, pts = umap_points
    assert pts.shape == (len(res.models), 2) and np.isfinite(pts).all()
    again = embed(res.metrics.coords, "umap", 2, seed=0)  # numba is compiled by now: cheap
    np.testing.assert_allclose(again, pts, atol=1e-6)
    table = pd.DataFrame([{"name": n, **lab} for n, lab in zip(res.models, res.labels)])
    fig = data(embedding_figure(pts, table, "group"))
    assert sorted(t["name"] for t in fig["data"]) == ["alpha", "beta"]


def test_tsne_embedding_shape_and_bad_options():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5))
    pts = embed(x, "tsne", 3, seed=1)
    assert pts.shape == (20, 3) and np.isfinite(pts).all()
    from explorer.core.errors import OptionError

    with pytest.raises(OptionError, match="method"):
        embed(x, "isomap")
    with pytest.raises(OptionError, match="dims"):
        embed(x, "pca", 4)
    with pytest.raises(OptionError, match="at least 3 models"):
        embed(x[:2], "pca")
