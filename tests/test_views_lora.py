"""LoRA views from factors: FactorStream against a float64 numpy reference (atol 1e-9 relative to O(1))."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from explorer import OptionError, load_family
from explorer.catalog.groups import build_catalog, find_group
from explorer.catalog.views import FactorStream, stream_for_view


def _write(root, name, a, b, cfg):
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **cfg}))
    save_file({"base_model.model.blk.0.fc.lora_A.weight": a, "base_model.model.blk.0.fc.lora_B.weight": b},
              str(d / "adapter_model.safetensors"))


def test_factor_stream_mixed_ranks_and_scales(tmp_path):
    rng = np.random.default_rng(0)
    spec = [(2, {"r": 2, "lora_alpha": 4}), (5, {"r": 5, "lora_alpha": 5, "use_rslora": True}),
            (3, {"r": 3, "lora_alpha": 1, "alpha_pattern": {"fc": 9}})]
    refs = []
    for i, (r, cfg) in enumerate(spec):
        a, b = rng.standard_normal((r, 7)), rng.standard_normal((6, r))
        _write(tmp_path, f"m{i}", a.astype(np.float64), b.astype(np.float64), cfg)
        s = {0: 4 / 2, 1: 5 / np.sqrt(5), 2: 9 / 3}[i]
        refs.append((b, a, s))
    fam = load_family(str(tmp_path))
    g = find_group(build_catalog(fam), "blk.0.fc")
    assert (g.rank, g.ranks, g.shape) == (None, (2, 3, 5), (6, 7))
    st = stream_for_view(fam, g, "dW")
    assert isinstance(st, FactorStream) and st.ranks == (2, 5, 3) and st.n_models == 3
    for _ in range(2):  # each open() is a fresh pass
        for (b, a, s), (rb, ra, rs) in zip(st.open(), refs):
            assert b.shape == rb.shape and a.shape == ra.shape and s == pytest.approx(rs, rel=1e-15)
            np.testing.assert_allclose(b.numpy(), rb, rtol=0, atol=1e-12)
    for w, (rb, ra, rs) in zip(st.dense().open(), refs):
        np.testing.assert_allclose(w.numpy(), rs * rb @ ra, rtol=0, atol=1e-9)
    # Mixed ranks: A and B are zero-padded to the largest rank, which leaves the stacked rows of A
    # (in-mode) and columns of B (out-mode) exact; the other modes and centerings are refused.
    from explorer.engine.options import SpectralOptions
    from explorer.pipeline.analyze import analyze

    for view, mode, unfold in (("A", "in", np.vstack([ra for _, ra, _ in refs])),
                               ("B", "out", np.hstack([rb for rb, _, _ in refs]))):
        st = stream_for_view(fam, g, view)
        st.check(mode, "none", view)
        res = analyze(fam, g, view=view, options=SpectralOptions(mode=mode), metrics=None)
        s = np.linalg.svd(unfold, compute_uv=False)
        np.testing.assert_allclose(res.spectrum.eigenvalues[: len(s)], s**2, rtol=1e-10)
        other = "out" if mode == "in" else "in"
        with pytest.raises(OptionError, match="ranks differ across models"):
            st.check(other, "none", view)
        with pytest.raises(OptionError, match="ranks differ across models"):
            st.check(mode, "model", view)
    with pytest.raises(OptionError, match="is not one of"):
        stream_for_view(fam, g, "nope")
