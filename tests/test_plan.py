"""The solver plan is chosen once, and the engine and the memory guard follow the same plan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import explorer.engine.plan as plan_mod
from explorer.core.errors import InputError, OptionError
from explorer.engine import memory
from explorer.engine.dense import SOLVERS as DENSE_SOLVERS
from explorer.engine.dense import decompose
from explorer.engine.factored import decompose_factored
from explorer.engine.options import SpectralOptions
from explorer.engine.plan import SOLVER_NAMES, make_plan

CPU = torch.device("cpu")


def test_solver_by_shape_and_method():
    assert make_plan((64, 32), 10, SpectralOptions(device="cpu")).solver == "gram"
    assert make_plan((64, 32), 10, SpectralOptions(mode="in", device="cpu")).solver == "gram"
    assert make_plan((1000, 4), 10, SpectralOptions(device="cpu")).solver == "thin"  # 40 columns < 1000
    assert make_plan((64, 32), 10, SpectralOptions(mode="model", device="cpu")).solver == "model"
    assert make_plan((64, 32), 10, SpectralOptions(method="randomized", device="cpu")).solver == "randomized"
    big = make_plan((50000, 50000), 8, SpectralOptions(device="cpu"))
    assert big.solver == "randomized" and big.d == 50000 and big.dtype == torch.float64
    assert make_plan((50000, 8), 4, SpectralOptions(device="cpu")).solver == "thin"  # thin beats randomized
    assert set(DENSE_SOLVERS) == set(SOLVER_NAMES)


def test_factored_plan_uses_known_ranks():
    opts = SpectralOptions(device="cpu")
    # Above the randomized threshold, 10 rank-16 adapters are a thin 160-column unfolding: exact.
    assert make_plan((20000, 512), 10, opts, ranks=(16,) * 10).solver == "thin"
    # Without the ranks the width is unknown before reading: the threshold decides.
    assert make_plan((20000, 512), 10, opts, factored=True).solver == "randomized"
    assert make_plan((512, 512), 10, opts, ranks=(16,) * 10).width == 160


def test_plan_errors():
    with pytest.raises(InputError, match="no adapters"):
        make_plan((4, 4), 0, SpectralOptions(), what="adapters")
    with pytest.raises(OptionError, match="--dtype"):
        make_plan((4, 4), 1, SpectralOptions(dtype="float16", device="cpu"))


def test_engine_and_memory_guard_follow_the_plan(monkeypatch):
    monkeypatch.setattr(plan_mod, "RANDOMIZED_THRESHOLD", 25)
    rng = np.random.default_rng(0)
    ws = [torch.from_numpy(rng.standard_normal((30, 20))) for _ in range(4)]
    opts = SpectralOptions(k_store=3, device="cpu")
    assert decompose(lambda: iter(ws), 4, (30, 20), opts).method == "randomized"
    est = memory.estimate((30, 20), 4, "out", options=opts, metrics=None)
    assert "randomized sketch 30 x 19" in " ".join(est.parts)
    # Known small ranks: the factored engine stays exact (thin) above the threshold, as planned.
    fs = [(torch.from_numpy(rng.standard_normal((30, 2))), torch.from_numpy(rng.standard_normal((2, 20))), 1.0)
          for _ in range(4)]
    sp = decompose_factored(lambda: iter(fs), 4, (30, 20), opts, ranks=(2,) * 4)
    assert sp.method == "factored" and len(sp.eigenvalues) == 30
    ref = np.linalg.svd(np.concatenate([(b @ a).numpy() for b, a, _ in fs], axis=1), compute_uv=False) ** 2
    np.testing.assert_allclose(sp.eigenvalues[:8], ref[:8], rtol=1e-10)
    parts = memory.estimate((30, 20), 4, "out", options=opts, metrics=None, ranks=(2,) * 4).parts
    assert any(k.startswith("unfolding 30 x 8") for k in parts)
