"""The randomized path on planted low-rank families, against scipy float64 SVDs.

Tolerances: with a gap of > 100x between the planted components and the noise, and the default
3 power iterations, the top eigenvalues agree to 1e-8 relative and bases to 1e-6 rad (the
docstring's bound gives (1/100)^8); the trace is exact to 1e-12.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from explorer.core.errors import OptionError
from explorer.engine.dense import decompose
from explorer.engine.options import CENTERS, SpectralOptions
from explorer.engine.randomized import (
    randomized_decompose,
    randomized_decompose_factored,
)
from tests.helpers import (
    dense_deltas,
    lora_factors,
    planted_matrices,
    reference_spectrum,
)


@pytest.mark.parametrize("mode", ["out", "in"])
@pytest.mark.parametrize("center", CENTERS)
def test_randomized_planted_matches_scipy(mode, center):
    ws = planted_matrices(n=15, m=60, k=50, rank=3, noise=1e-3, seed=2)
    tensors = [torch.tensor(w) for w in ws]
    opts = SpectralOptions(mode=mode, center=center, method="randomized", k_store=3, oversample=5)
    sp = decompose(lambda: iter(tensors), 15, (60, 50), opts)
    assert sp.method == "randomized" and sp.eigenvalues.shape == (3,) and sp.basis.shape[1] == 3
    ref_vals, ref_vecs = reference_spectrum(ws, mode, center)
    assert np.allclose(sp.eigenvalues, ref_vals[:3], rtol=1e-8)
    assert np.isclose(sp.total, ref_vals.sum(), rtol=1e-12)
    assert sl.subspace_angles(sp.basis, ref_vecs[:, :3]).max() < 1e-6
    assert np.allclose(sp.basis.T @ sp.basis, np.eye(3), atol=1e-12)


def test_randomized_deterministic_given_seed():
    tensors = [torch.tensor(w) for w in planted_matrices(n=8, m=30, k=20, seed=3)]
    opts = SpectralOptions(method="randomized", k_store=4, seed=7)
    a = randomized_decompose(lambda: iter(tensors), 8, (30, 20), opts)
    b = randomized_decompose(lambda: iter(tensors), 8, (30, 20), opts)
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and np.array_equal(a.basis, b.basis)


@pytest.mark.parametrize("center", CENTERS)
def test_randomized_factored_matches_scipy(center):
    fs = lora_factors(n=10, m=40, k=30, ranks=(2,), seed=4, shared=True)
    ws = dense_deltas(fs)
    for mode in ("out", "in"):
        opts = SpectralOptions(mode=mode, center=center, method="randomized", k_store=2, oversample=20)
        sp = randomized_decompose_factored(lambda: iter(fs), 10, (40, 30), opts)
        ref_vals, ref_vecs = reference_spectrum(ws, mode, center)
        assert np.isclose(sp.total, ref_vals.sum(), rtol=1e-12)
        # Unplanted tail here: l = 22 >= the unfolding's rank 20, so the result is exact.
        assert np.allclose(sp.eigenvalues, ref_vals[:2], rtol=1e-8)


def test_randomized_needs_reopenable_stream():
    with pytest.raises(OptionError, match="re-openable"):
        randomized_decompose([torch.zeros(3, 3)], 1, (3, 3), SpectralOptions(method="randomized"))


def test_auto_switches_to_randomized_above_threshold(monkeypatch):
    import explorer.engine.plan as spectral
    from explorer.engine.factored import decompose_factored

    monkeypatch.setattr(spectral, "RANDOMIZED_THRESHOLD", 25)
    tensors = [torch.tensor(w) for w in planted_matrices(n=8, m=30, k=20, seed=5)]
    opts = SpectralOptions(k_store=3)
    assert decompose(lambda: iter(tensors), 8, (30, 20), opts).method == "randomized"  # m = 30 > 25
    assert decompose(lambda: iter(tensors), 8, (30, 20), SpectralOptions(mode="in", k_store=3)).method == "exact"
    fs = lora_factors(n=4, m=30, k=20, seed=6)
    assert decompose_factored(lambda: iter(fs), 4, (30, 20), opts).method == "randomized"
    with pytest.raises(OptionError, match="re-openable"):
        decompose(iter(tensors), 8, (30, 20), opts)


def test_auto_prefers_exact_thin_unfolding_above_threshold(monkeypatch):
    import explorer.engine.plan as spectral

    monkeypatch.setattr(spectral, "RANDOMIZED_THRESHOLD", 25)
    tensors = [torch.tensor(w) for w in planted_matrices(n=3, m=40, k=5, seed=7)]  # 3 * 5 < 40
    assert decompose(lambda: iter(tensors), 3, (40, 5), SpectralOptions(k_store=3)).method == "thin"
