"""LoRA views from factors: FactorStream against a float64 numpy reference (atol 1e-9 relative to O(1))."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer import OptionError, load_family
from explorer.catalog.groups import build_catalog, find_group
from explorer.catalog.views import FactorStream, stream_for_view
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
    from explorer.engine.options import SpectralOptions
    from explorer.pipeline.analyze import analyze

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
