"""The factored LoRA ΔW engine against the dense engine and scipy SVDs of the dense unfolding.

Tolerances: float64 eigenvalues within 1e-10 relative to the largest; bases within 1e-8 rad.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from explorer.core.errors import InputError
from explorer.engine.dense import decompose
from explorer.engine.factored import decompose_factored
from explorer.engine.options import CENTERS, MODES, SpectralOptions
from tests.helpers import dense_deltas, lora_factors, reference_spectrum

RTOL = 1e-10


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("n", [3, 12])  # 3: thin (sum r_i < d/2) path; 12: stacked Gram path
def test_factored_matches_dense_scipy(mode, center, n):
    fs = lora_factors(n=n, seed=n)
    ws = dense_deltas(fs)
    sp = decompose_factored(fs, n, (14, 11), SpectralOptions(mode=mode, center=center))
    ref_vals, ref_vecs = reference_spectrum(ws, mode, center)
    k = len(ref_vals)
    assert np.allclose(sp.eigenvalues[:k], ref_vals, rtol=0, atol=RTOL * ref_vals[0])
    assert np.all(np.abs(sp.eigenvalues[k:]) <= RTOL * ref_vals[0])
    b = sp.basis
    assert np.allclose(b.T @ b, np.eye(b.shape[1]), atol=1e-12)
    # Compare the leading, well-separated part of the basis.
    gaps = ref_vals[:-1] / np.maximum(ref_vals[1:], 1e-300)
    top = int(np.argmax(gaps[:4] > 1.05)) + 1 if np.any(gaps[:4] > 1.05) else 0
    if top:
        assert sl.subspace_angles(b[:, :top], ref_vecs[:, :top]).max() < 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_factored_equals_dense_engine(mode):
    fs = lora_factors(n=10, shared=True, seed=5)
    ws = [torch.tensor(w) for w in dense_deltas(fs)]
    for center in CENTERS:
        opts = SpectralOptions(mode=mode, center=center)
        f = decompose_factored(fs, 10, (14, 11), opts)
        d = decompose(ws, 10, (14, 11), opts)
        assert np.allclose(f.eigenvalues, d.eigenvalues, rtol=0, atol=RTOL * d.eigenvalues[0])
        assert sl.subspace_angles(f.basis[:, :1], d.basis[:, :1]).max() < 1e-8
        assert np.allclose(f.basis[:, 0], d.basis[:, 0], atol=1e-8)  # same sign convention


def test_factored_trace_invariant():
    fs = lora_factors(n=9, seed=6)
    fro = sum(float((w**2).sum()) for w in dense_deltas(fs))
    for mode in MODES:
        assert np.isclose(decompose_factored(fs, 9, (14, 11), SpectralOptions(mode=mode)).total, fro, rtol=1e-12)


def test_factored_large_total_rank_densifies_mean():
    # sum r_i > min(m, n)/2: the mean is folded into a dense m x n sum; still exact.
    fs = lora_factors(n=20, m=10, k=9, ranks=(4, 5), seed=7)
    ws = dense_deltas(fs)
    for mode in ("out", "in"):
        sp = decompose_factored(fs, 20, (10, 9), SpectralOptions(mode=mode, center="model"))
        ref_vals, _ = reference_spectrum(ws, mode, "model")
        assert np.allclose(sp.eigenvalues[: len(ref_vals)], ref_vals, rtol=0, atol=RTOL * ref_vals[0])


def test_factored_opener_and_determinism():
    fs = lora_factors(n=6, seed=8)
    a = decompose_factored(lambda: iter(fs), 6, (14, 11), SpectralOptions(center="vector"))
    b = decompose_factored(fs, 6, (14, 11), SpectralOptions(center="vector"))
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and np.array_equal(a.basis, b.basis)


def test_factored_float32_within_tolerance():
    fs = lora_factors(n=12, seed=9)
    f32 = [(b.float(), a.float(), s) for b, a, s in fs]
    ws = dense_deltas([(b.double(), a.double(), s) for b, a, s in f32])
    for mode in MODES:
        sp = decompose_factored(f32, 12, (14, 11), SpectralOptions(mode=mode, dtype="float32"))
        ref_vals, _ = reference_spectrum(ws, mode, "none")
        assert np.allclose(sp.eigenvalues[: len(ref_vals)], ref_vals, rtol=0, atol=1e-5 * ref_vals[0])


def test_factored_bad_input():
    b, a = torch.zeros(14, 2), torch.zeros(3, 11)
    with pytest.raises(InputError, match="adapter 0"):
        decompose_factored([(b, a, 1.0)], 1, (14, 11), SpectralOptions())
    with pytest.raises(InputError, match="scale"):
        decompose_factored([(torch.zeros(14, 2), torch.zeros(2, 11), float("nan"))], 1, (14, 11), SpectralOptions())
    with pytest.raises(InputError, match="expected 2 adapters"):
        decompose_factored(lora_factors(n=1), 2, (14, 11), SpectralOptions())
