"""The dense engine against scipy float64 SVDs of the explicit unfolding.

Tolerances: float64 eigenvalues within 1e-10 relative to the largest (round-off is ~1e-15 at
these sizes); bases within 1e-8 rad (scipy.linalg.subspace_angles) where the spectrum has a
gap; float32 accumulation within 1e-4 relative to the largest eigenvalue.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from explorer.core.errors import InputError, OptionError
from explorer.core.linalg import eigh_desc
from explorer.engine.dense import GramAccumulator, decompose
from explorer.engine.model_gram import model_gram
from explorer.engine.options import CENTERS, MODES, SpectralOptions, Spectrum
from tests.helpers import (
    planted_matrices,
    reference_gram,
    reference_spectrum,
    write_family,
)

RTOL = 1e-10


def random_family(n=6, m=10, k=7, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((m, k)) for _ in range(n)]


def check(sp: Spectrum, ws, mode, center, rtol=RTOL):
    ref_vals, ref_vecs = reference_spectrum(ws, mode, center)
    k = len(ref_vals)
    assert np.allclose(sp.eigenvalues[:k], ref_vals, rtol=0, atol=rtol * ref_vals[0])
    assert np.all(sp.eigenvalues[k:] <= rtol * ref_vals[0])
    assert np.all(np.diff(sp.eigenvalues) <= 1e-12 * ref_vals[0])
    return ref_vals, ref_vecs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("center", CENTERS)
def test_random_family_matches_scipy(mode, center):
    ws = random_family()
    sp = decompose([torch.tensor(w) for w in ws], len(ws), ws[0].shape, SpectralOptions(mode=mode, center=center))
    check(sp, ws, mode, center)
    assert sp.mode == mode and sp.center == center
    # Orthonormal, sign-fixed basis.
    b = sp.basis
    assert np.allclose(b.T @ b, np.eye(b.shape[1]), atol=1e-12)
    idx = np.abs(b).argmax(axis=0)
    assert np.all(b[idx, np.arange(b.shape[1])] > 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("center", CENTERS)
def test_planted_family_basis_matches_scipy(mode, center):
    ws = planted_matrices()
    sp = decompose([torch.tensor(w) for w in ws], len(ws), ws[0].shape, SpectralOptions(mode=mode, center=center))
    ref_vals, ref_vecs = check(sp, ws, mode, center)
    # The top-2 components are separated by a wide gap in every convention.
    angles = sl.subspace_angles(sp.basis[:, :2], ref_vecs[:, :2])
    assert angles.max() < 1e-8


@pytest.mark.parametrize("mode", ["out", "in"])
@pytest.mark.parametrize("center", CENTERS)
def test_thin_unfolding_path(mode, center):
    # N * width < d: the engine SVDs the unfolding instead of forming the d x d Gram.
    ws = random_family(n=3, m=40, k=5, seed=3) if mode == "out" else [w.T for w in random_family(3, 40, 5, 3)]
    sp = decompose([torch.tensor(w) for w in ws], 3, ws[0].shape, SpectralOptions(mode=mode, center=center))
    assert sp.method == "thin"
    assert sp.eigenvalues.shape == (40,)
    ref_vals, ref_vecs = check(sp, ws, mode, center)
    assert np.allclose(sp.basis.T @ sp.basis, np.eye(sp.basis.shape[1]), atol=1e-12)
    nz = int((ref_vals > 1e-8 * ref_vals[0]).sum())
    assert sl.subspace_angles(sp.basis[:, :nz], ref_vecs[:, :nz]).max() < 1e-8


def test_trace_invariants():
    ws = random_family(n=5, m=9, k=6, seed=4)
    tensors = [torch.tensor(w) for w in ws]
    fro = sum(float((w**2).sum()) for w in ws)
    totals = [decompose(tensors, 5, (9, 6), SpectralOptions(mode=mode)).total for mode in MODES]
    assert np.allclose(totals, fro, rtol=1e-12)


def test_accumulator_many_buffer_flushes_matches_direct():
    # More columns than one buffer holds, so several flushes happen.
    rng = np.random.default_rng(5)
    ws = [rng.standard_normal((8, 300)) for _ in range(20)]
    acc = GramAccumulator("out", (8, 300), torch.float64, torch.device("cpu"))
    for w in ws:
        acc.add(torch.tensor(w))
    assert np.allclose(acc.centered("none").numpy(), reference_gram(ws, "out"), rtol=1e-12, atol=1e-9)


def test_model_mode_row_blocks_match_stack():
    ws = random_family(n=7, m=13, k=11, seed=6)
    tensors = [torch.tensor(w) for w in ws]
    direct = model_gram(tensors, 7, (13, 11), torch.float64, torch.device("cpu"))
    seen = []

    def reader(r0, r1):
        seen.append((r0, r1))
        return (t[r0:r1] for t in tensors)

    # A block budget of ~3 rows forces several row-blocks.
    blocked = model_gram(tensors, 7, (13, 11), torch.float64, torch.device("cpu"), row_reader=reader,
                         block_bytes=7 * 11 * 8 * 3)
    assert len(seen) == 5 and seen[0] == (0, 3) and seen[-1] == (12, 13)
    assert np.allclose(blocked.numpy(), direct.numpy(), rtol=1e-13, atol=1e-12)
    # Without a row reader, a re-openable stream is sliced pass by pass.
    sliced = model_gram(lambda: iter(tensors), 7, (13, 11), torch.float64, torch.device("cpu"),
                        block_bytes=7 * 11 * 8 * 4)
    assert np.allclose(sliced.numpy(), direct.numpy(), rtol=1e-13, atol=1e-12)
    assert np.allclose(direct.numpy(), reference_gram(ws, "model"), rtol=1e-13)


def test_decompose_accepts_row_reader_and_opener():
    ws = random_family(n=5, m=6, k=4, seed=7)
    tensors = [torch.tensor(w) for w in ws]
    opts = SpectralOptions(mode="model", center="model")
    a = decompose(lambda: iter(tensors), 5, (6, 4), opts, row_reader=lambda r0, r1: (t[r0:r1] for t in tensors))
    check(a, ws, "model", "model")


def test_float32_path_within_tolerance():
    ws = planted_matrices(seed=8)
    for mode in MODES:
        sp = decompose([torch.tensor(w, dtype=torch.float32) for w in ws], len(ws), ws[0].shape,
                       SpectralOptions(mode=mode, center="model", dtype="float32"))
        ref_vals, _ = reference_spectrum(ws, mode, "model")
        assert np.allclose(sp.eigenvalues[: len(ref_vals)], ref_vals, rtol=0, atol=1e-4 * ref_vals[0])


def test_half_precision_inputs_are_upcast():
    ws = [w.astype(np.float16).astype(np.float64) for w in random_family(seed=9)]
    for dt in (torch.float16, torch.bfloat16):
        t = [torch.tensor(w).to(dt) for w in ws]
        ws_exact = [x.double().numpy() for x in t]
        sp = decompose(t, len(t), ws[0].shape, SpectralOptions())
        check(sp, ws_exact, "out", "none")


def test_deterministic_repeated_runs():
    ws = [torch.tensor(w) for w in random_family(n=9, m=12, k=10, seed=10)]
    for mode in MODES:
        opts = SpectralOptions(mode=mode, center="vector")
        a, b = decompose(ws, 9, (12, 10), opts), decompose(ws, 9, (12, 10), opts)
        assert np.array_equal(a.eigenvalues, b.eigenvalues) and np.array_equal(a.basis, b.basis)


def test_top_k_truncation():
    ws = [torch.tensor(w) for w in random_family(seed=11)]
    full = decompose(ws, 6, (10, 7), SpectralOptions())
    top = decompose(ws, 6, (10, 7), SpectralOptions(k_store=3))
    assert top.basis.shape == (10, 3) and top.eigenvalues.shape == (10,)
    assert np.allclose(top.basis, full.basis[:, :3]) and np.array_equal(top.eigenvalues, full.eigenvalues)


def test_eigh_desc_sorted_and_clipped():
    g = torch.tensor(np.diag([1.0, -1e-17, 3.0]))
    vals, vecs = eigh_desc(g, 2)
    assert vals.tolist() == [3.0, 1.0, 0.0] and vecs.shape == (3, 2)


def test_bad_input_and_options():
    ws = [torch.zeros(3, 4), torch.zeros(3, 5)]
    with pytest.raises(InputError, match="does not match"):
        decompose(ws, 2, (3, 4), SpectralOptions())
    with pytest.raises(InputError, match="expected 3 models"):
        decompose([torch.zeros(3, 4)] * 2, 3, (3, 4), SpectralOptions())
    with pytest.raises(InputError, match="expected 3 models"):
        decompose([torch.zeros(3, 4)] * 2, 3, (3, 4), SpectralOptions(mode="model"))
    for bad in (dict(mode="side"), dict(center="mean"), dict(method="fast"), dict(k_store=0),
                dict(power_iters=-1)):
        with pytest.raises(OptionError):
            SpectralOptions(**bad)
    with pytest.raises(OptionError, match="re-openable"):
        decompose(iter([torch.zeros(3, 4)]), 1, (3, 4), SpectralOptions(method="randomized"))


def test_symmetric_block_updates_match_full_products():
    # d >= 256 splits the Gram into upper blocks; the mirrored result equals the full product.
    from explorer.engine.gram import StackedGram

    rng = np.random.default_rng(12)
    pieces = [rng.standard_normal((600, c)) for c in (3, 4100, 5)]  # 4100 > buffer width: direct path
    acc = StackedGram(600, torch.float64, torch.device("cpu"))
    for p in pieces:
        acc.add(torch.tensor(p))
    assert np.allclose(acc.flush().numpy(), reference_gram(pieces, "out"), rtol=1e-12, atol=1e-9)
    acc.add(torch.tensor(pieces[0]))  # reading, then adding more, stays consistent
    assert np.allclose(acc.flush().numpy(), reference_gram(pieces + pieces[:1], "out"), rtol=1e-12, atol=1e-9)
    ws = [torch.tensor(rng.standard_normal((2, 3))) for _ in range(520)]
    k = model_gram(ws, 520, (2, 3), torch.float64, torch.device("cpu"), row_reader=lambda r0, r1: (w[r0:r1] for w in ws))
    assert np.allclose(k.numpy(), reference_gram([w.numpy() for w in ws], "model"), rtol=1e-12, atol=1e-12)


def test_triangular_block_updates_skip_the_zeros_exactly():
    # A factor whose first columns are upper triangular (the null's staircase): the skipped
    # products are exact zeros, so the Gram equals the full product, at 2048 (8 blocks) and 300.
    from explorer.engine.gram import sym_mirror_, sym_update_

    rng = np.random.default_rng(14)
    for d, w in ((2048, 2600), (300, 200), (300, 450)):
        x = rng.standard_normal((d, w))
        m = min(d, w)
        x[:, :m] = np.triu(x[:, :m])
        g = torch.zeros(d, d, dtype=torch.float64)
        sym_update_(g, torch.tensor(x), upper=m)
        np.testing.assert_allclose(sym_mirror_(g, triangular=True).numpy(), x @ x.T, rtol=1e-12, atol=1e-9)


def test_family_row_reader_reads_rows_from_safetensors(tmp_path):
    from explorer.engine.model_gram import family_row_reader
    from explorer.sources.resolve import load_family

    rng = np.random.default_rng(13)
    mats = {f"m{i}": rng.standard_normal((9, 5)) for i in range(4)}
    fam = load_family(str(write_family(tmp_path / "fam", mats, dtype=torch.float16)))
    reader = family_row_reader(fam, "layers.0.weight")
    rows = list(reader(2, 5))
    exact = [torch.tensor(mats[f"m{i}"]).half().float() for i in range(4)]
    assert all(r.dtype == torch.float32 and torch.equal(r, e[2:5]) for r, e in zip(rows, exact))
    ws = [e.double().numpy() for e in exact]
    sp = decompose(lambda: (t for _, t in fam.iter_tensors("layers.0.weight")), 4, (9, 5),
                   SpectralOptions(mode="model", center="model"), row_reader=reader)
    check(sp, ws, "model", "model")
    base_reader = family_row_reader(fam, "layers.0.weight", base=fam.models[0])
    assert torch.equal(next(iter(base_reader(0, 9))), torch.zeros(9, 5))


def test_backend_device_override_and_upcast():
    from explorer.core.backend import as_compute, pick_device, pick_dtype

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(OptionError, match="not one of"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="no CUDA"):
            pick_device("cuda")
    with pytest.raises(OptionError, match="MPS"):
        pick_dtype("float64", torch.device("mps"))
    x = torch.ones(2, 3, dtype=torch.bfloat16)
    y = as_compute(x, torch.float64, torch.device("cpu"))
    assert y.dtype == torch.float64 and torch.equal(y, torch.ones(2, 3, dtype=torch.float64))
    z = torch.ones(2, dtype=torch.float64)
    assert as_compute(z, torch.float64, torch.device("cpu")) is z  # no copy when already right
