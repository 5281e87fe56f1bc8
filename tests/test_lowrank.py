"""explorer.core.lowrank against dense float64 numpy, and the model-mode kernel built once.

Every LowRank operation is compared with the same computation on the dense matrix (rtol 1e-12,
atol 1e-12 of the reference's largest entry, since entries near zero carry only absolute
round-off); singular vectors to 1e-10 (they also depend on the singular-value gaps).
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch

import explorer.pipeline.analyze as pipeline
from explorer.core.errors import InputError
from explorer.core.linalg import sign_fix
from explorer.core.lowrank import LowRank, as_lowrank, left_products
from explorer.core.lowrank_sum import LowRankSum
from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.sources.resolve import load_family
from tests.helpers import reference_gram, write_adapter, write_family

F64 = torch.float64
CPU = torch.device("cpu")


def close(got, ref, rtol=1e-12):
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def factors(m=9, n=7, r=3, seed=0, scale=-1.7):
    rng = np.random.default_rng(seed)
    b, a = rng.standard_normal((m, r)), rng.standard_normal((r, n))
    return torch.from_numpy(b), torch.from_numpy(a), scale


def cases():
    """(LowRank, its dense X as numpy): factored with r < min, r > e, and dense; each transposed too."""
    out = []
    for m, n, r, seed in ((9, 7, 3, 0), (6, 4, 5, 1), (5, 8, 8, 2)):
        b, a, s = factors(m, n, r, seed)
        x = LowRank.from_lora(b, a, s, shape=(m, n))
        ref = s * b.numpy() @ a.numpy()
        out += [(x, ref), (x.T, ref.T)]
    w = np.random.default_rng(3).standard_normal((6, 5))
    out += [(LowRank(torch.from_numpy(w)), w), (LowRank(torch.from_numpy(w)).T, w.T)]
    return out


CASES = cases()
IDS = [f"{'f' if x.factored else 'd'}{x.shape[0]}x{x.shape[1]}r{x.rank}" for x, _ in CASES]


@pytest.mark.parametrize("x,ref", CASES, ids=IDS)
def test_every_operation_matches_dense_numpy(x, ref):
    d, e = ref.shape
    rng = np.random.default_rng(9)
    assert x.shape == (d, e)
    close(x.dense(), ref)
    close(x.T.dense(), ref.T)
    f = x.gram_factor()
    assert f.shape[0] == d and f.shape[1] <= (min(x.rank, e) if x.factored else e)
    close(f @ f.T, ref @ ref.T)
    g = x.cogram_factor()
    assert g.shape[0] == e
    close(g @ g.T, ref.T @ ref)
    close(x.column_sum(), ref.sum(axis=1))
    assert x.sq_norm() == pytest.approx(float((ref**2).sum()), rel=1e-12)
    z = rng.standard_normal((d, e))
    assert x.inner(torch.from_numpy(z)) == pytest.approx(float((ref * z).sum()), rel=1e-12)
    u = rng.standard_normal((d, 4))
    close(x.left_product(torch.from_numpy(u)), u.T @ ref)
    y = rng.standard_normal((e, 3))
    close(x @ torch.from_numpy(y), ref @ y)
    acc = torch.from_numpy(z.copy())
    x.add_to(acc, alpha=-0.5)
    close(acc, z - 0.5 * ref)
    k = 2
    basis = x.left_basis(k)
    want = sign_fix(np.linalg.svd(ref, full_matrices=False)[0][:, :k])
    np.testing.assert_allclose(basis, want, atol=1e-10)


def test_transpose_shares_storage_and_round_trips():
    b, a, s = factors()
    x = LowRank.from_lora(b, a, s, shape=(9, 7))
    t = x.T
    assert t.shape == (7, 9) and t.scale == s and t.rank == 3
    assert t.left.data_ptr() == a.data_ptr() and t.right.data_ptr() == b.data_ptr()
    tt = t.T
    assert tt.left is not None and tt.shape == x.shape
    close(tt.dense(), x.dense().numpy())


def test_to_converts_once_and_keeps_identity_when_nothing_changes():
    b, a, s = factors()
    x = LowRank.from_lora(b, a, s)
    assert x.to(F64, CPU) is x
    y = x.to(torch.float32, CPU)
    assert y.left.dtype == torch.float32 and y.right.dtype == torch.float32 and y.scale == s
    np.testing.assert_allclose(y.dense().double().numpy(), x.dense().numpy(), rtol=1e-5, atol=1e-5)


def test_lora_validation_messages():
    b, a = torch.zeros(14, 2), torch.zeros(3, 11)
    with pytest.raises(InputError, match=r"adapter 4: B \(14, 2\) and A \(3, 11\) do not factor an 14x11 update"):
        LowRank.from_lora(b, a, 1.0, index=4, shape=(14, 11))
    with pytest.raises(InputError, match=r"adapter 1: B \(14, 2\) and A \(2, 11\) do not factor an 13x11 update"):
        LowRank.from_lora(torch.zeros(14, 2), torch.zeros(2, 11), 1.0, index=1, shape=(13, 11))
    with pytest.raises(InputError, match="do not factor"):
        LowRank.from_lora(torch.zeros(14), torch.zeros(2, 11), 1.0)
    with pytest.raises(InputError, match="adapter 2: scale nan is not finite"):
        LowRank.from_lora(torch.zeros(14, 2), torch.zeros(2, 11), float("nan"), index=2)
    with pytest.raises(InputError, match="adapter 2: scale inf is not finite"):
        LowRank.from_lora(torch.zeros(14, 2), torch.zeros(2, 11), float("inf"), index=2)
    with pytest.raises(InputError, match="adapter 0: expected a \\(B, A, scale\\) triple"):
        LowRank.from_lora(np.zeros((14, 2)), torch.zeros(2, 11), 1.0)
    with pytest.raises(InputError, match="do not form"):
        LowRank(torch.zeros(4, 2), torch.zeros(3, 5))
    with pytest.raises(InputError, match="not finite"):
        LowRank(torch.zeros(4, 2), torch.zeros(2, 5), float("nan"))


def test_as_lowrank_is_the_one_coercion():
    b, a, s = factors()
    # A triple is checked and converted; a LowRank only has its shape compared.
    x = as_lowrank((b.float(), a.float(), s), 0, (9, 7), F64, CPU)
    assert x.factored and x.left.dtype == F64 and x.scale == s
    y = LowRank.from_lora(b, a, s)
    assert as_lowrank(y, 0, (9, 7), F64, CPU) is y
    assert as_lowrank(y, 0, (9, 7)) is y
    with pytest.raises(InputError, match=r"adapter 3: B \(9, 3\) and A \(3, 7\) do not factor an 9x8 update"):
        as_lowrank(y, 3, (9, 8), F64, CPU)
    with pytest.raises(InputError, match="adapter 5: expected a \\(B, A, scale\\) triple"):
        as_lowrank((b, a), 5, (9, 7), F64, CPU)
    with pytest.raises(InputError, match="adapter 1: expected a \\(B, A, scale\\) triple"):
        as_lowrank(torch.zeros(9, 7), 1, (9, 7), F64, CPU)  # the factored engine takes no dense matrix
    w = as_lowrank(torch.ones(9, 7, dtype=torch.float16), 1, (9, 7), F64, CPU, dense=True)
    assert not w.factored and w.left.dtype == F64
    with pytest.raises(InputError, match=r"model 2: matrix of shape \(9, 6\) does not match the group's \(9, 7\)"):
        as_lowrank(torch.zeros(9, 6), 2, (9, 7), F64, CPU, dense=True)
    with pytest.raises(InputError, match="model 0: expected a matrix or a \\(B, A, scale\\) triple"):
        as_lowrank(3.0, 0, (9, 7), F64, CPU, dense=True)
    with pytest.raises(InputError, match="adapter 2: scale nan is not finite"):
        as_lowrank((b, a, float("nan")), 2, (9, 7), F64, CPU)


def _terms(n, d=12, e=10, r=2, seed=4):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b, a = rng.standard_normal((d, r)), rng.standard_normal((r, e))
        out.append((LowRank.from_lora(torch.from_numpy(b), torch.from_numpy(a), 0.5 + i), (0.5 + i) * b @ a))
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 8])  # cap min(12, 10) // 2 = 5: rank 2, 4 stay factored; 6, 16 fold
def test_running_sum_matches_dense_sum_below_and_above_folding(n):
    terms = _terms(n)
    total = LowRankSum((12, 10), F64, CPU)
    for x, _ in terms:
        total.add(x)
    ref = sum(w for _, w in terms)
    assert total.count == n
    assert total.factored == (2 * n <= 5)
    v = total.value()
    assert v.factored == total.factored
    close(v.dense(), ref)
    f = total.gram_factor()
    close(f @ f.T, ref @ ref.T)
    # The transposed side: the same sum of X_i^T.
    tsum = LowRankSum((10, 12), F64, CPU)
    for x, _ in terms:
        tsum.add(x.T)
    g = tsum.gram_factor()
    close(g @ g.T, ref.T @ ref)


def test_running_sum_mixes_dense_terms_and_keeps_folding_after_the_first_fold():
    terms = _terms(6)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((12, 10))
    total = LowRankSum((12, 10), F64, CPU)
    for x, _ in terms[:4]:  # rank 8 > 5: folded
        total.add(x)
    total.add(LowRank(torch.from_numpy(w)))
    for x, _ in terms[4:]:  # pending factors after the fold (the cap is now 256)
        total.add(x)
    ref = sum(t for _, t in terms) + w
    assert not total.factored
    close(total.value().dense(), ref)
    f = total.gram_factor()
    close(f @ f.T, ref @ ref.T)
    with pytest.raises(InputError, match="cannot join"):
        total.add(LowRank(torch.zeros(10, 12, dtype=F64)))


def test_densified_sum_drops_its_factors_and_keeps_adding():
    # The metrics' fold sums are densified once read: the factors (which grow with N) are not
    # kept beside the dense sum, and a term added afterwards still lands in it.
    terms = _terms(3)
    total = LowRankSum((12, 10), F64, CPU)
    for x, _ in terms[:2]:
        total.add(x)
    assert total.factored
    dense = total.densify()
    close(dense, terms[0][1] + terms[1][1])
    assert not total.factored and total._lbuf is None and total._rbuf is None
    total.add(terms[2][0])
    close(total.value().dense(), sum(w for _, w in terms))
    assert total.densify() is total.value().dense()  # one dense tensor, no copy
    close(LowRankSum((4, 3), F64, CPU).densify(), np.zeros((4, 3)))


def test_partition_sums_hold_no_factors_once_read():
    from explorer.metrics.heldout import PartitionGrams

    terms = _terms(6)
    parts = PartitionGrams(np.array([0, 1, 0, 1, 0, 1]), 12, 10, F64, CPU)
    for i, (x, _) in enumerate(terms):
        parts.add(i, x)
    g, s, n = parts.total()
    close(s, sum(w for _, w in terms))
    assert n == 6 and all(c._lbuf is None for c in parts._sums)
    _, s0, n0 = parts.without(0, (g, s, n))
    close(s0, sum(w for i, (_, w) in enumerate(terms) if i % 2 == 1))
    close(parts.cell(1)[1], s0)


def test_empty_running_sum_is_zero():
    total = LowRankSum((4, 3), F64, CPU)
    assert total.gram_factor().shape == (4, 0)
    close(total.value().dense(), np.zeros((4, 3)))


# --------------------------------------------------------------------- model-mode kernel built once
def _count_reads(monkeypatch):
    """Count, per model index, every read by a stream's ``open`` or the model-mode row reader."""
    reads: Counter = Counter()
    opens = []
    real_stream, real_rows = pipeline.stream_for_view, pipeline.family_row_reader

    def counted_stream(*args, **kw):
        stream = real_stream(*args, **kw)
        inner = stream.open

        def opened():
            opens.append(1)
            for i, item in enumerate(inner()):
                reads[i] += 1
                yield item

        return dataclasses.replace(stream, open=opened)

    def counted_rows(*args, **kw):
        reader = real_rows(*args, **kw)

        def rows(r0, r1):
            for i, piece in enumerate(reader(r0, r1)):
                reads[i] += 1
                yield piece

        return rows

    monkeypatch.setattr(pipeline, "stream_for_view", counted_stream)
    monkeypatch.setattr(pipeline, "family_row_reader", counted_rows)
    return reads, opens


MO = MetricsOptions(folds=3, loo="on", null_draws=2)


@pytest.mark.parametrize("center", ["none", "model"])
def test_model_mode_analysis_reads_every_dense_model_once(tmp_path, monkeypatch, center):
    rng = np.random.default_rng(11)
    ws = {f"m{i}": rng.standard_normal((8, 6)) for i in range(5)}
    fam = load_family(str(write_family(tmp_path / "fam", ws, dtype=torch.float64)))
    reads, opens = _count_reads(monkeypatch)
    res = pipeline.analyze(fam, "layers.0", options=SpectralOptions(mode="model", center=center, device="cpu"),
                           metrics=MO)
    assert reads == Counter({i: 1 for i in range(5)}) and not opens  # the row reader alone, one block
    np.testing.assert_allclose(res.metrics.kernel, reference_gram(list(ws.values()), "model", center),
                               rtol=1e-12, atol=1e-12)
    assert res.metrics.heldout.loo is not None and res.metrics.heldout.kfold is not None
    # The side modes' three passes (spectrum, then the two metrics passes) read each file once
    # too: the first pass is kept and replayed (catalog.views.held).
    reads.clear()
    pipeline.analyze(fam, "layers.0", options=SpectralOptions(mode="out", device="cpu"), metrics=MO)
    assert reads == Counter({i: 1 for i in range(5)})


@pytest.mark.parametrize("view", ["dW", "A"])
def test_model_mode_analysis_reads_every_adapter_once(tmp_path, monkeypatch, view):
    rng = np.random.default_rng(12)
    for i in range(4):
        a, b = rng.standard_normal((2, 7)), rng.standard_normal((6, 2))
        write_adapter(tmp_path / f"a{i}", {"blk.0.fc": (a, b)}, r=2, alpha=1 + i, dtype=torch.float64)
    fam = load_family(str(tmp_path))
    reads, opens = _count_reads(monkeypatch)
    so = SpectralOptions(mode="model", center="model", device="cpu")
    res = pipeline.analyze(fam, "blk.0.fc", view=view, options=so, metrics=MO)
    assert reads == Counter({i: 1 for i in range(4)}) and len(opens) == 1
    # Same numbers as the engine's own model-mode entry point, and as the metrics' own kernel.
    stream = pipeline.stream_for_view(fam, res.group, view)
    direct = pipeline._spectrum(stream, so, None)
    np.testing.assert_allclose(res.spectrum.eigenvalues, direct.eigenvalues, rtol=1e-12,
                               atol=1e-12 * direct.eigenvalues[0])
    assert res.spectrum.method == direct.method
    mats = [x.dense().numpy() for x in stream.open()] if view == "dW" else list(stream.open())
    np.testing.assert_allclose(res.metrics.kernel, reference_gram(mats, "model", "model"), rtol=1e-10, atol=1e-10)


def test_left_products_of_a_block_equal_one_product_per_item():
    # Dense, transposed and factored items in one block: U^T X_i to round-off (1e-12 relative).
    rng = np.random.default_rng(3)
    u = torch.from_numpy(np.linalg.qr(rng.standard_normal((30, 7)))[0])
    items = [LowRank(torch.from_numpy(rng.standard_normal((30, 5)))),
             LowRank(torch.from_numpy(rng.standard_normal((9, 30)))).T,
             LowRank.from_lora(torch.from_numpy(rng.standard_normal((30, 3))),
                               torch.from_numpy(rng.standard_normal((3, 11))), 0.5, index=2, shape=(30, 11))]
    items = [x.to(torch.float64, torch.device("cpu")) for x in items]
    got = left_products(u, items)
    for x, p in zip(items, got):
        torch.testing.assert_close(p, x.left_product(u), rtol=1e-12, atol=1e-12)
    assert left_products(u, []) == []
