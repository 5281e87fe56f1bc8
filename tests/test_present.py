"""explorer.present helpers the pages and the report share, tested without Streamlit."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import explorer
from explorer.metrics.sums import MAX_GROUPS
from explorer.metrics.results import MetricsOptions
from explorer.present.curves import cumulative_matrix
from explorer.present.overlap import overlap_scale
from explorer.present.tables import default_group_column, group_columns, metadata_table

MO = MetricsOptions(null_draws=2, folds=3, k_angles=4)


@pytest.fixture(scope="module")
def random_res(tmp_path_factory):
    from tests.helpers import write_family

    rng = np.random.default_rng(0)
    mats = {f"m{i}": {"layers.0.weight": rng.standard_normal((12, 9))} for i in range(6)}
    labels = {f"m{i}": {"group": "ab"[i % 2], "seed": str(i), "arch": "mlp"} for i in range(6)}
    fam = explorer.load_family(str(write_family(tmp_path_factory.mktemp("fam") / "random", mats, labels)))
    return explorer.analyze(fam, "layers.0", metrics=MO)


def test_cumulative_matrix_truncates_and_pads_with_one():
    curves = [np.array([0.5, 0.8, 0.9, 1.0]), np.array([0.7, 1.0]), np.array([0.2, 0.4, 0.6, 0.8, 0.9, 1.0])]
    mat = cumulative_matrix(curves, 5)
    assert mat.shape == (3, 5)  # no wider than max_components
    np.testing.assert_array_equal(mat[0], [0.5, 0.8, 0.9, 1.0, 1.0])
    np.testing.assert_array_equal(mat[1], [0.7, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(mat[2], [0.2, 0.4, 0.6, 0.8, 0.9])
    # ... and no wider than the longest curve
    assert cumulative_matrix(curves[:2], 64).shape == (2, 4)
    assert cumulative_matrix([], 8).shape == (0, 0)


def test_group_columns_keep_two_to_max_groups_values():
    n = MAX_GROUPS + 1
    table = pd.DataFrame({
        "name": [f"m{i}" for i in range(n)],
        "constant": ["x"] * n,                                  # one value: says nothing
        "pair": ["a", "b"] * (n // 2) + ["a"] * (n % 2),       # 2 groups
        "at_limit": [str(i % MAX_GROUPS) for i in range(n)],   # exactly MAX_GROUPS groups
        "identifier": [str(i) for i in range(n)],               # MAX_GROUPS + 1: too many
    })
    assert group_columns(table) == ["pair", "at_limit"]


def test_default_group_column_prefers_known_names_among_candidates():
    table = pd.DataFrame({"name": ["a", "b", "c"], "task": ["x", "y", "x"], "task_group": ["g", "g", "g"],
                          "group": ["p", "q", "q"]})
    # task_group comes first in GROUP_COLUMNS but has one value, so it is no candidate.
    assert default_group_column(table) == "group"
    assert default_group_column(table.drop(columns=["group"])) == "task"
    assert default_group_column(table[["name"]]) is None


def test_metadata_table_of_an_analysis(random_res):
    table = metadata_table(random_res)
    assert list(table["name"]) == random_res.models
    assert table.shape == (6, 4)
    assert group_columns(table) == ["group", "seed"]
    assert default_group_column(table) == "group"


def test_overlap_scale_reads_k_from_the_stored_overlaps(random_res):
    scale = overlap_scale(random_res)
    assert scale is not None
    assert scale.d == random_res.spectrum.basis.shape[0] == 12
    assert scale.k == random_res.metrics.overlaps.cosines.shape[1] == MO.k_angles
    assert scale.expectation == pytest.approx(4 / 12)


def test_overlap_scale_is_none_without_overlaps(random_res):
    fam = explorer.load_family(random_res.source)
    res = explorer.analyze(fam, "layers.0", options=explorer.SpectralOptions(mode="model"), metrics=MO)
    assert res.metrics.overlaps is None and overlap_scale(res) is None
    assert overlap_scale(explorer.analyze(fam, "layers.0", metrics=None)) is None
