"""Colouring models by a label: categories for few distinct values, and the best-separating default.

Tested without Streamlit, on the figure's JSON and on planted point clouds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from explorer.core.errors import OptionError
from explorer.figures import embedding_figure
from explorer.figures.embedding import CATEGORY_COLORS
from explorer.present.embedding import best_separating_label, separation
from explorer.present.tables import MAX_CATEGORIES, category_order, is_categorical
from tests.helpers import decode_plotly


def data(fig) -> dict:
    return decode_plotly(fig.to_plotly_json())


def planted_points(n: int = 40, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Two clusters split by ``init_group``; ``noise`` and ``rank`` are unrelated to them."""
    rng = np.random.default_rng(seed)
    group = np.arange(n) % 2
    pts = rng.standard_normal((n, 2)) * 0.3 + np.c_[4.0 * group, np.zeros(n)]
    table = pd.DataFrame({
        "name": [f"m{i}" for i in range(n)],
        "noise": rng.integers(0, 4, n),  # numeric, 4 values, unrelated to the points
        "rank": rng.permutation(np.arange(n) % 5 + 1),
        "init_group": np.where(group == 1, "independent-A", "shared-A"),
        "seed": np.arange(n),  # one value per model: an identifier, never a candidate
    })
    return pts, table


def test_best_separating_label_finds_the_planted_column():
    pts, table = planted_points()
    assert best_separating_label(pts, table) == "init_group"
    assert separation(pts, table["init_group"]) > 0.9
    assert abs(separation(pts, table["noise"])) < 0.2
    # 3-D points: a third axis of noise does not change the answer
    pts3 = np.c_[pts, np.random.default_rng(1).standard_normal(len(pts)) * 0.3]
    assert best_separating_label(pts3, table) == "init_group"


def test_separation_is_the_anova_share_corrected_for_the_group_count():
    pts, table = planted_points(30)
    col = table["noise"]
    centered = pts - pts.mean(0)
    between = sum((col == v).sum() * ((pts[col == v].mean(0) - pts.mean(0)) ** 2).sum() for v in col.unique())
    r2 = between / (centered**2).sum()
    n, g = len(pts), col.nunique()
    assert separation(pts, col) == pytest.approx(1 - (1 - r2) * (n - 1) / (n - g), rel=1e-12)


def test_best_separating_label_ties_keep_column_order_and_no_signal_gives_none():
    pts, table = planted_points()
    table["init_copy"] = table["init_group"].map({"shared-A": 0, "independent-A": 1})  # same groups, later column
    table = table[["name", "init_copy", "noise", "init_group"]]
    assert best_separating_label(pts, table) == "init_copy"
    table = table[["name", "noise", "init_group", "init_copy"]]
    assert best_separating_label(pts, table) == "init_group"
    # a label with one value, or more than MAX_CATEGORIES, is never a candidate
    only = pd.DataFrame({"name": table["name"], "one": 1, "many": np.arange(len(table)) % (MAX_CATEGORIES + 1)})
    assert best_separating_label(pts, only) is None
    # points that do not vary are separated by no label
    assert best_separating_label(np.zeros_like(pts), table) is None
    assert best_separating_label(pts, table[["name"]]) is None
    with pytest.raises(OptionError):
        best_separating_label(pts[:-1], table)


def test_a_numeric_label_with_two_values_is_coloured_as_categories():
    pts, table = planted_points()
    table["a_init_seed"] = np.where(table["init_group"] == "shared-A", 1234, 7)
    assert is_categorical(table["a_init_seed"]) and not is_categorical(table["seed"])
    fig = data(embedding_figure(pts, table, "a_init_seed"))
    # one trace per value, in increasing numeric order, each a single colour; no colour scale
    assert [t["name"] for t in fig["data"]] == ["7", "1234"]
    colours = [t["marker"]["color"] for t in fig["data"]]
    assert all(isinstance(c, str) for c in colours) and len(set(colours)) == 2
    assert not any(t["marker"].get("showscale") or "colorscale" in t["marker"] for t in fig["data"])
    assert fig["layout"]["legend"]["title"]["text"] == "a_init_seed"
    for t in fig["data"]:
        seeds = table["a_init_seed"].to_numpy()[np.asarray(t["customdata"], dtype=int)]
        assert set(seeds.tolist()) == {int(t["name"])}


def test_twelve_values_are_categories_with_distinct_colours_thirteen_a_scale():
    n = 39
    rng = np.random.default_rng(2)
    pts = rng.standard_normal((n, 2))
    table = pd.DataFrame({"name": [f"m{i}" for i in range(n)], "rank": np.arange(n) % 12 + 1,
                          "step": np.arange(n) % 13})
    fig = data(embedding_figure(pts, table, "rank"))
    assert [t["name"] for t in fig["data"]] == [str(v) for v in range(1, 13)]  # 1..12, not 1, 10, 11, 12, 2...
    assert len({t["marker"]["color"] for t in fig["data"]}) == 12 <= len(CATEGORY_COLORS)
    scale = data(embedding_figure(pts, table, "step"))
    assert [t["name"] for t in scale["data"]] == ["models"]
    marker = scale["data"][0]["marker"]
    assert marker["showscale"] and marker["colorbar"]["title"]["text"] == "step"
    np.testing.assert_array_equal(np.asarray(marker["color"], dtype=float), table["step"].to_numpy(dtype=float))


def test_category_order_sorts_numbers_and_keeps_text_order():
    assert category_order(pd.Series([10, 2, 1, 2])) == ["1", "2", "10"]
    assert category_order(pd.Series(["b", "a", "b"])) == ["b", "a"]
    assert is_categorical(pd.Series(["x"] * 3 + [str(i) for i in range(20)]))  # text: always categories
