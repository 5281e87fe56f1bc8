"""Accuracy after projection onto k shared components (zoo families with an evaluator)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import explorer
from explorer.core.errors import OptionError
from explorer.pipeline.analyze import analyze_cached
from explorer.present.projection import accuracy_against_k, supports
from explorer.zoo.evaluators import evaluator_for
from explorer.zoo.projection import _evaluate, accuracy_vs_k, heldout_accuracy_vs_k, view_matrices


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
    acc = accuracy_against_k(finetune_res, (1, d), heldout=False)
    # k = d keeps the whole space: every group's accuracy equals its stored accuracy.
    for g, curve in acc.by_group.items():
        assert curve[-1] == pytest.approx(acc.original_by_group[g], abs=1e-6)
    # one direction is far from enough for the permuted-label tasks
    assert acc.by_group["permutation"][0] < acc.original_by_group["permutation"] - 0.3
    table = acc.table()
    assert list(table.columns) == ["group", "unprojected", "k=1", f"k={d}"]
    assert np.isfinite(table.iloc[:, 1:].to_numpy(dtype=float)).all()


def test_heldout_basis_is_fitted_without_the_fold_and_scratch_models_drop():
    # Scratch-trained models: the in-sample projection flatters the subspace (the audit: .879 -> .762
    # at k = 32); a basis fitted without the model's fold keeps less of its accuracy.
    res = analyze_cached("zoo:digits-mlp-scratch", "layers.1")
    acc = accuracy_against_k(res, (32,))
    fitted, held = acc.by_group["all"][0], acc.heldout_by_group["all"][0]
    assert held < fitted - 0.05
    assert "held-out k=32" in acc.table().columns
    # One model by hand: its fold's complement's Gram, top-32 eigenvectors, projection, accuracy.
    folds = res.metrics.heldout.folds
    df = heldout_accuracy_vs_k(res, [32], folds)
    ev = evaluator_for(res.source)
    key, mats = view_matrices(ev, "layers.1", "full", res.models)
    name = res.models[0]
    train = [n for n, f in zip(res.models, folds) if f != folds[0]]
    g = sum(mats[n].double() @ mats[n].double().T for n in train).numpy()
    u = np.linalg.eigh(g)[1][:, ::-1][:, :32]
    mine = _evaluate(ev, "layers.1", "full", key, mats, [name], [32], torch.from_numpy(u.copy()).float(), None, None)
    assert df.loc[df["model"] == name, "accuracy"].iloc[0] == pytest.approx(mine["accuracy"].iloc[0], abs=1e-6)


def test_a_subset_keeps_the_fitted_mean():
    # Centred on the mean model: evaluating some models must not re-centre on them.
    res = analyze_cached("zoo:digits-mlp-finetune", "layers.1", options=explorer.SpectralOptions(center="model"))
    whole = accuracy_vs_k(res, [4])
    some = accuracy_vs_k(res, [4], models=res.models[:5])
    np.testing.assert_allclose(some["accuracy"].to_numpy(), whole["accuracy"].to_numpy()[:5], atol=1e-9)
