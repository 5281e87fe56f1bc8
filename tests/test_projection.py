"""Accuracy after projection onto k shared components (zoo families with an evaluator)."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.core.errors import OptionError
from explorer.pipeline.analyze import analyze_cached
from explorer.present.projection import accuracy_against_k, supports


@pytest.fixture(scope="module")
def finetune_res():
    return analyze_cached("zoo:digits-mlp-finetune", "layers.1")


def test_planted_has_no_evaluator():
    res = explorer.analyze(explorer.load_family("zoo:planted"), "layers.0", metrics=None)
    assert not supports(res)
    with pytest.raises(OptionError):
        accuracy_against_k(res, (1, 2))


def test_full_rank_projection_is_the_identity(finetune_res):
    d = finetune_res.spectrum.basis.shape[1]
    acc = accuracy_against_k(finetune_res, (1, d))
    # k = d keeps the whole space: every group's accuracy equals its stored accuracy.
    for g, curve in acc.by_group.items():
        assert curve[-1] == pytest.approx(acc.original_by_group[g], abs=1e-6)
    # one direction is far from enough for the permuted-label tasks
    assert acc.by_group["permutation"][0] < acc.original_by_group["permutation"] - 0.3
    table = acc.table()
    assert list(table.columns) == ["group", "unprojected", "k=1", f"k={d}"]
    assert np.isfinite(table.iloc[:, 1:].to_numpy(dtype=float)).all()
