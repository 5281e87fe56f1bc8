"""LoRA views from factors: FactorStream against a float64 numpy reference (atol 1e-9 relative to O(1))."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer import OptionError, load_family
from explorer.catalog.groups import build_catalog, find_group
from explorer.catalog.views import VIEWS, FactorStream, default_mode, stream_for_view
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze, analyze_cached, cache_key
from explorer.pipeline.cache import ResultCache
from tests.helpers import reference_spectrum, write_adapter


def test_factor_stream_mixed_ranks_and_scales(tmp_path):
    rng = np.random.default_rng(0)
    spec = [(2, {"alpha": 4}), (5, {"alpha": 5, "use_rslora": True}), (3, {"alpha": 1, "alpha_pattern": {"fc": 9}})]
    refs = []
    for i, (r, cfg) in enumerate(spec):
        a, b = rng.standard_normal((r, 7)), rng.standard_normal((6, r))
        write_adapter(tmp_path / f"m{i}", {"blk.0.fc": (a, b)}, r, dtype=torch.float64, **cfg)
        s = {0: 4 / 2, 1: 5 / np.sqrt(5), 2: 9 / 3}[i]
        refs.append((b, a, s))
    fam = load_family(str(tmp_path))
    g = find_group(build_catalog(fam), "blk.0.fc")
    assert (g.rank, g.ranks, g.shape) == (None, (2, 3, 5), (6, 7))
    st = stream_for_view(fam, g, "dW")
    assert isinstance(st, FactorStream) and st.ranks == (2, 5, 3) and st.n_models == 3
    for _ in range(2):  # each open() is a fresh pass
        for x, (rb, ra, rs) in zip(st.open(), refs):
            b, a, s = x.left, x.right, x.scale
            assert b.shape == rb.shape and a.shape == ra.shape and s == pytest.approx(rs, rel=1e-15)
            np.testing.assert_allclose(b.numpy(), rb, rtol=0, atol=1e-12)
    for w, (rb, ra, rs) in zip(st.dense().open(), refs):
        np.testing.assert_allclose(w.numpy(), rs * rb @ ra, rtol=0, atol=1e-9)
    # Mixed ranks: A and B are zero-padded to the largest rank, which leaves the stacked rows of A
    # (in-mode) and columns of B (out-mode) exact; the other modes and centerings are refused.
    for view, mode, factors in (("A", "in", [ra for _, ra, _ in refs]), ("B", "out", [rb for rb, _, _ in refs])):
        st = stream_for_view(fam, g, view)
        st.check(mode, "none", view)
        res = analyze(fam, g, view=view, options=SpectralOptions(mode=mode), metrics=None)
        lam = reference_spectrum(factors, mode)[0]
        np.testing.assert_allclose(res.spectrum.eigenvalues[: len(lam)], lam, rtol=1e-10)
        other = "out" if mode == "in" else "in"
        with pytest.raises(OptionError, match="ranks differ across models"):
            st.check(other, "none", view)
        with pytest.raises(OptionError, match="ranks differ across models"):
            st.check(mode, "model", view)
    with pytest.raises(OptionError, match="is not one of"):
        stream_for_view(fam, g, "nope")


def _adapters(folder, n_models=5, m=7, n=9, ranks=(2,)):
    """A PEFT family of one module "blk.0.fc" (B: m x r, A: r x n); ranks cycle over the models."""
    rng = np.random.default_rng(4)
    for i in range(n_models):
        r = ranks[i % len(ranks)]
        write_adapter(folder / f"a{i}", {"blk.0.fc": (rng.standard_normal((r, n)), rng.standard_normal((m, r)))}, r)
    return load_family(str(folder))


def test_default_mode_of_each_view():
    assert {v: default_mode(v) for v in VIEWS} == {"full": "out", "delta": "out", "A": "in", "B": "out", "dW": "out"}
    with pytest.raises(OptionError, match="is not one of"):
        default_mode("nope")
    # None is "not chosen": resolved to the caller's default; an explicit mode is kept.
    assert SpectralOptions().mode is None and SpectralOptions().resolved().mode == "out"
    assert SpectralOptions(center="model").resolved("in") == SpectralOptions(mode="in", center="model")
    assert SpectralOptions(mode="out").resolved("in").mode == "out"
    with pytest.raises(OptionError, match="is not one of"):
        SpectralOptions(mode="sideways")


def test_view_a_defaults_to_the_input_space_and_an_explicit_mode_wins(tmp_path):
    fam = _adapters(tmp_path / "fam")
    g = find_group(build_catalog(fam), "blk.0.fc")
    # (view, options) -> (mode, number of components): A's in-mode spans R^n, its out-mode only r x r.
    cases = {("A", None): ("in", 9), ("B", None): ("out", 7), ("dW", None): ("out", 7),
             ("A", "out"): ("out", 2), ("B", "in"): ("in", 2), ("A", "model"): ("model", 5)}
    for (view, mode), (want, d) in cases.items():
        res = analyze(fam, g, view=view, options=SpectralOptions(mode=mode), metrics=None)
        assert (res.spectrum.mode, res.options.mode, len(res.spectrum.eigenvalues)) == (want, want, d), (view, mode)
        assert res.to_json()["mode"] == res.to_json()["options"]["mode"] == want
    ref = reference_spectrum([a for a, _ in _factors_of(fam, g)], "in")[0]
    np.testing.assert_allclose(analyze(fam, g, view="A", metrics=None).spectrum.eigenvalues, ref, rtol=1e-10)
    # The key is made from the resolved mode: not choosing one is choosing the view's.
    assert cache_key(fam, g, "A") == cache_key(fam, g, "A", SpectralOptions(mode="in"))
    assert cache_key(fam, g, "A") != cache_key(fam, g, "A", SpectralOptions(mode="out"))
    assert cache_key(fam, g, "B") == cache_key(fam, g, "B", SpectralOptions(mode="out"))
    # Through the disk cache the result (and its JSON) records the mode; the explicit spelling hits.
    store = ResultCache(tmp_path / "cache")
    first = analyze_cached(fam, "blk.0.fc", "A", SpectralOptions(center="none"), None, cache=store)
    again = analyze_cached(fam, "blk.0.fc", "A", SpectralOptions(mode="in"), None, cache=store)
    assert first.options.mode == again.options.mode == "in" and again.from_cache
    assert first.to_json()["mode"] == "in" and first.cache_key == again.cache_key


def test_view_a_of_mixed_ranks_works_without_choosing_a_mode(tmp_path):
    # Mixed ranks allow only A's in-mode and B's out-mode: the defaults are exactly those.
    fam = _adapters(tmp_path / "fam", ranks=(1, 2, 3))
    for view, mode in (("A", "in"), ("B", "out")):
        assert analyze(fam, "blk.0.fc", view=view, metrics=None).spectrum.mode == mode
    with pytest.raises(OptionError, match="ranks differ across models"):
        analyze(fam, "blk.0.fc", view="A", options=SpectralOptions(mode="out"), metrics=None)


def _factors_of(fam, g):
    """(A_i, B_i) of every adapter, as float64 numpy arrays."""
    return [(fam.tensor(m, g.tensor).double().numpy(), fam.tensor(m, g.b_tensor).double().numpy())
            for m in fam.models]
