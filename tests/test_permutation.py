"""Permutation null of group x group overlaps, and the random-rotation reference of model overlaps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import explorer
from explorer.core.linalg import centered_gram, eigh_top
from explorer.engine.dense import decompose
from explorer.engine.options import SpectralOptions
from explorer.metrics import angles
from explorer.metrics.passes import compute_metrics
from explorer.metrics.permutation import group_permutation_summary, permuted_group_overlaps
from explorer.metrics.random_reference import random_overlap_band
from explorer.metrics.results import MetricsOptions


def _groups_of(ws, labels, k=3):
    so = SpectralOptions(mode="out", device="cpu")
    opener = lambda: (torch.from_numpy(w) for w in ws)  # noqa: E731
    sp = decompose(opener(), len(ws), ws[0].shape, so)
    met = compute_metrics(opener, len(ws), ws[0].shape, sp.basis, so, MetricsOptions(null_draws=0, k_angles=k),
                          [{"group": g} for g in labels])
    return met.groups


def test_planted_distinct_groups_and_meaningless_labels():
    rng = np.random.default_rng(0)
    d, e, k = 30, 8, 3
    u1, u2 = (np.linalg.qr(rng.standard_normal((d, k)))[0] for _ in range(2))
    ws = [(u1 if i < 10 else u2) @ rng.standard_normal((k, e)) + 0.05 * rng.standard_normal((d, e)) for i in range(20)]
    gr = _groups_of(ws, ["a"] * 10 + ["b"] * 10)
    perm = group_permutation_summary(gr.overlap, gr.permuted)
    assert gr.permuted.shape == (99, 2, 2)
    assert perm["observed"] < perm["lo"] and perm["p_distinct"] == pytest.approx(0.01)
    # Labels that mean nothing: one family, labels drawn at random.
    gr2 = _groups_of(ws[:10] + ws[:10], list(rng.permutation(["a"] * 10 + ["b"] * 10)))
    perm2 = group_permutation_summary(gr2.overlap, gr2.permuted)
    assert perm2["p_distinct"] > 0.05 and perm2["p_alike"] > 0.05


def test_one_relabelling_by_hand():
    rng = np.random.default_rng(1)
    sides = [torch.from_numpy(rng.standard_normal((12, 5))) for _ in range(9)]
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    got = permuted_group_overlaps(sides, groups, 3, 2, "model", permutations=1, seed=4)[0]
    labels = np.random.default_rng([4, 7]).permutation(groups)
    bases = []
    for c in range(3):
        xs = [sides[i] for i in np.flatnonzero(labels == c)]
        g = sum(x @ x.T for x in xs)
        bases.append(eigh_top(centered_gram(g, sum(xs), len(xs), "model"), 2)[1].numpy())
    np.testing.assert_allclose(got, angles.overlap_matrix(bases), atol=1e-12)


def test_zoo_lora_task_groups_are_more_distinct_than_chance():
    # The audit: digits-lora A-view task groups overlap 0.51 against a permutation median of 0.71.
    gr = explorer.analyze(explorer.load_family("zoo:digits-lora"), "layers.0", view="A").metrics.groups
    perm = group_permutation_summary(gr.overlap, gr.permuted)
    assert perm["observed"] < perm["median"] and perm["p_distinct"] <= 0.05


def test_random_rotation_band():
    med, lo, hi = random_overlap_band(64, 8, draws=400)
    assert lo < med < hi and med == pytest.approx(8 / 64, rel=0.1)
