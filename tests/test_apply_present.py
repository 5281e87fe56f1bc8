"""The Apply views' builders without Streamlit: figures hold the library's numbers, tables their rows,
truncated compressions equal direct ones, and newcomers land on the family's PCA axes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from explorer import load_family
from explorer.apply.compression import compress_family
from explorer.figures import compression_figure, embedding_figure, merge_figure, newcomer_figure
from explorer.pipeline.cache import ResultCache
from explorer.present.apply import compression_table, default_merge_models, merge_pivot
from explorer.present.embedding import embed, embed_with_newcomers
from tests.helpers import decode_plotly, trace, write_family


@pytest.fixture
def comp_and_family(tmp_path):
    rng = np.random.default_rng(5)
    u = np.linalg.qr(rng.standard_normal((10, 3)))[0]
    mats = {f"m{i}": u @ rng.standard_normal((3, 7)) + 0.02 * rng.standard_normal((10, 7)) for i in range(6)}
    fam = load_family(str(write_family(tmp_path / "f", mats, dtype=torch.float64)))
    return compress_family(fam, None, k=10, cache=ResultCache(tmp_path / "c")), fam, tmp_path


def test_truncation_is_exact_and_the_figure_holds_the_curve(comp_and_family):
    comp, fam, tmp = comp_and_family
    direct = compress_family(fam, None, k=3, cache=ResultCache(tmp / "c"))
    cut = comp.truncated(3, fam)
    assert cut.bytes_after == direct.bytes_after
    np.testing.assert_allclose(cut.entries[0].errors, direct.entries[0].errors, rtol=1e-9, atol=1e-14)
    for i in range(6):
        np.testing.assert_allclose(cut.entries[0].rebuild(i).numpy(), direct.entries[0].rebuild(i).numpy(), atol=1e-12)
    e = comp.entries[0]
    curve = e.error_curve()
    fig = compression_figure({"full": curve}, mean_only={"full": float(np.nanmean(e.mean_errors))})
    fig = decode_plotly(fig.to_dict())
    np.testing.assert_allclose(trace(fig, "full")["y"], np.nanmean(curve, 0))
    np.testing.assert_allclose(curve[:, 2], direct.entries[0].errors, rtol=1e-9, atol=1e-14)
    t = compression_table(cut)
    assert list(t["k"]) == [3] and t["bytes after"][0] == cut.bytes_after


def test_newcomer_and_merge_figures():
    fig = newcomer_figure(np.array([0.8, 0.85, 0.9, np.nan]), [("a", 0.5, True), ("b", 0.86, False)], k=4)
    fig = decode_plotly(fig.to_dict())
    assert list(trace(fig, "a (outlier)")["x"]) == [0.5, 0.5]
    assert len(trace(fig, "family (held-out)")["x"]) == 3
    table = pd.DataFrame([
        {"model": "mean", "kind": "merge", "task": "t1", "accuracy": 0.6, "expert": 0.9, "normalized": 0.6 / 0.9, "own": False},
        {"model": "mean", "kind": "merge", "task": "t2", "accuracy": 0.8, "expert": 0.8, "normalized": 1.0, "own": False},
        {"model": "m1", "kind": "model", "task": "t1", "accuracy": 0.9, "expert": 0.9, "normalized": 1.0, "own": True},
        {"model": "m1", "kind": "model", "task": "t2", "accuracy": 0.4, "expert": 0.8, "normalized": 0.5, "own": False},
    ])
    fig = decode_plotly(merge_figure(table).to_dict())
    assert list(trace(fig, "mean")["y"]) == pytest.approx([0.6, 0.8, 0.7])
    assert list(trace(fig, "expert (own task)")["y"]) == pytest.approx([0.9, 0.8, 0.85])
    pivot = merge_pivot(table)
    assert list(pivot["model"]) == ["mean", "m1"] and pivot["mean"].tolist() == pytest.approx([0.7, 0.65])
    assert pivot["normalized mean"].tolist() == pytest.approx([(0.6 / 0.9 + 1) / 2, 0.75])


def test_newcomers_land_on_the_familys_pca_axes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)) * np.array([5, 3, 1, 0.5, 0.1])
    fam_pts, new_pts, note = embed_with_newcomers(x, x[[3, 7]], "pca", 2)
    np.testing.assert_allclose(fam_pts, embed(x, "pca", 2), atol=1e-12)
    np.testing.assert_allclose(new_pts, fam_pts[[3, 7]], atol=1e-12)  # a member placed as a newcomer: its own point
    assert "PCA axes" in note
    table = pd.DataFrame({"name": [f"m{i}" for i in range(12)]})
    fig = decode_plotly(embedding_figure(fam_pts, table, newcomers=(new_pts, ["n1", "n2"])).to_dict())
    assert list(trace(fig, "newcomers")["x"]) == pytest.approx(list(new_pts[:, 0]))
    assert "customdata" not in trace(fig, "newcomers") or trace(fig, "newcomers")["customdata"] is None


def test_default_merge_models_prefer_tasks_that_share_labels():
    md = pd.DataFrame({"name": ["a", "b", "c", "d", "e", "f"], "task": ["all", "perm-1", "subset-12", "subset-12",
                                                                          "rot+10", "noise-0.1"],
                       "task_group": ["all", "permutation", "subset", "subset", "rotation", "noise"]})
    assert default_merge_models(md) == ["c", "e", "f"]
    assert default_merge_models(md.drop(columns="task_group"), 2) == ["a", "b"]
    assert default_merge_models(pd.DataFrame({"name": ["x", "y"]})) == ["x", "y"]


def test_coefficients_figure_holds_the_table():
    from explorer.figures import coefficients_figure

    table = pd.DataFrame([
        {"method": "full LoRA", "k": None, "trainable": 1000, "accuracy": 0.9, "accuracy_min": 0.88, "accuracy_max": 0.92},
        {"method": "coefficients", "k": 4, "trainable": 96, "accuracy": 0.8, "accuracy_min": 0.8, "accuracy_max": 0.8},
        {"method": "coefficients", "k": 1, "trainable": 24, "accuracy": 0.6, "accuracy_min": 0.5, "accuracy_max": 0.7},
        {"method": "base (no training)", "k": None, "trainable": 0, "accuracy": 0.5, "accuracy_min": 0.5,
         "accuracy_max": 0.5},
    ])
    fig = decode_plotly(coefficients_figure(table).to_dict())
    c = trace(fig, "coefficients (basis frozen)")
    assert list(c["x"]) == [24, 96] and list(c["y"]) == pytest.approx([0.6, 0.8])
    assert list(trace(fig, "full LoRA")["y"]) == pytest.approx([0.9])


def test_accuracy_by_group():
    from explorer.present.apply import accuracy_by_group

    curve = pd.DataFrame({"model": ["a", "b", "a", "b"], "k": [1, 1, 2, 2], "accuracy": [0.1, 0.3, 0.5, 0.7],
                          "stored_accuracy": [0.9, 0.8, 0.9, 0.8]})
    by, stored = accuracy_by_group(curve, pd.DataFrame({"name": ["a", "b"], "task_group": ["x", "y"]}))
    assert list(by["x"]) == [0.1, 0.5] and stored == {"x": 0.9, "y": 0.8}
    by, stored = accuracy_by_group(curve, pd.DataFrame({"name": ["a", "b"]}))
    assert list(by["all models"]) == pytest.approx([0.2, 0.6]) and stored["all models"] == pytest.approx(0.85)
