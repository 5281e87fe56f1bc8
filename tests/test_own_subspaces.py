"""Own subspaces truncated to each model's rank; padded LoRA factors in the overlaps and the null."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import explorer.pipeline.analyze as pipeline
from explorer.core.lowrank import LowRank
from explorer.engine.dense import decompose
from explorer.engine.options import SpectralOptions
from explorer.metrics import angles
from explorer.metrics.passes import compute_metrics
from explorer.metrics.results import MetricsOptions
from explorer.sources.resolve import load_family
from tests.helpers import write_adapter

MO = MetricsOptions(null_draws=20, folds=2, k_angles=8)


def test_left_basis_is_truncated_to_the_rank():
    rng = np.random.default_rng(0)
    padded = np.concatenate([rng.standard_normal((12, 3)), np.zeros((12, 5))], axis=1)
    assert LowRank(torch.from_numpy(padded)).left_basis(8).shape == (12, 3)
    assert LowRank(torch.zeros(12, 8, dtype=torch.float64)).left_basis(8).shape == (12, 0)
    b, a = torch.from_numpy(rng.standard_normal((12, 4))), torch.from_numpy(rng.standard_normal((4, 9)))
    b[:, 3] = 0  # a rank-3 product stored as rank 4
    assert LowRank.from_lora(b, a, 1.0).left_basis(8).shape == (12, 3)


def test_overlaps_of_truncated_and_empty_bases():
    u = np.linalg.qr(np.random.default_rng(1).standard_normal((10, 6)))[0]
    mat = angles.overlap_matrix([u[:, :2], u[:, :6], np.zeros((10, 0))])
    assert mat[0, 1] == pytest.approx(1.0)  # a subspace inside another: overlap 1 at k = min(2, 6)
    assert np.isnan(mat[2]).all() and np.isnan(mat[:, 2]).all()
    assert np.isnan(angles.overlap_matrix([np.zeros((10, 0))])).all()


def test_padded_low_rank_model_inside_the_universal_subspace_overlaps_fully():
    # Every B factor's columns lie in one 8-dim subspace; model 0 has rank 4 (zero-padded to 8), and
    # model 5 is zero.  The audit measured 0.51 for the first and ~0.5 for zero models.
    rng = np.random.default_rng(2)
    u = np.linalg.qr(rng.standard_normal((30, 8)))[0]
    ws = [u @ rng.standard_normal((8, 8)) for _ in range(8)]
    ws[0][:, 4:] = 0.0
    ws[5][:] = 0.0
    so = SpectralOptions(mode="out", center="none", device="cpu")
    opener = lambda: (torch.from_numpy(w) for w in ws)  # noqa: E731
    sp = decompose(opener(), len(ws), ws[0].shape, so)
    met = compute_metrics(opener, len(ws), ws[0].shape, sp.basis, so, MO)
    ov = met.overlaps
    assert ov.vs_universal[0] == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(ov.vs_universal[5]) and np.isnan(ov.own[5]).all()
    assert np.isnan(ov.cosines[0, 4:]).all() and ov.cosines[0, :4] == pytest.approx(1.0, abs=1e-9)
    assert any("truncated to each model's rank" in n for n in met.notes)
    assert any("zero after centring" in n for n in met.notes)
    # Its captured energies are undefined, not 0: left out of the family's means.
    assert np.isnan(met.energy_one[5]).all() and np.isfinite(met.energy_one[np.arange(8) != 5]).all()
    assert any("left out of the means" in n for n in met.notes)


def test_mixed_rank_adapters_padded_view_uses_each_rank(tmp_path):
    # Adapters of ranks 2 and 6 in one family: view B pads to 6; the own subspaces and the null
    # both see each adapter's own rank.
    rng = np.random.default_rng(3)
    for i, r in enumerate([2, 6, 6, 2, 6, 6]):
        a, b = rng.standard_normal((r, 9)), rng.standard_normal((16, r))
        write_adapter(tmp_path / f"a{i}", {"blk.0.fc": (a, b)}, r=r, dtype=torch.float64)
    fam = load_family(str(tmp_path))
    res = pipeline.analyze(fam, "blk.0.fc", view="B", options=SpectralOptions(device="cpu"),
                           metrics=MetricsOptions(null_draws=20, folds=2, k_angles=4))
    ov = res.metrics.overlaps
    assert np.isnan(ov.cosines[0, 2:]).all() and np.isfinite(ov.cosines[1]).all()
    # The stream tells the null each adapter's rank (2 dof for a rank-2 adapter, not the padded 6).
    band = res.metrics.null
    assert band is not None and "16 x 6" in band.construction
    stream = pipeline.stream_for_view(fam, res.group, "B")
    assert stream.widths == (2, 6, 6, 2, 6, 6)
