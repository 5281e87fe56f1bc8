"""The memory guard: estimates from shapes alone, the budget, and refusal before any tensor is read."""
from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from explorer import cli
from explorer.core.errors import OptionError
from explorer.engine import memory
from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.pipeline.analyze import analyze, analyze_cached
from explorer.pipeline.cache import ResultCache
from explorer.sources import readers
from explorer.sources.resolve import load_family
from tests.helpers import write_family

GiB = 1 << 30


def test_out_and_in_mode_gram_is_d_squared():
    est = memory.estimate((4096, 1024), 100, "out", metrics=None)
    assert est.parts["Gram 4096 x 4096 float64"] == 3 * 4096**2 * 8
    assert est.parts["one model"] == 4096 * 1024 * 12
    est = memory.estimate((4096, 1024), 100, "in", options=SpectralOptions(dtype="float32"), metrics=None)
    assert est.parts["Gram 1024 x 1024 float32"] == 3 * 1024**2 * 4


def test_thin_unfolding_when_it_is_smaller_than_the_gram():
    est = memory.estimate((10000, 8), 4, "out", metrics=None)  # N*n = 32 < m: the unfolding is held
    assert est.parts["unfolding 10000 x 32 (thin SVD)"] == 2 * 10000 * 32 * 8
    assert est.total < 10 << 20


def test_randomized_path_above_the_threshold():
    est = memory.estimate((50000, 50000), 8, "out", metrics=None)
    (name, b), = [(k, v) for k, v in est.parts.items() if k.startswith("randomized")]
    assert b == 4 * 50000 * (256 + SpectralOptions().oversample) * 8  # the solver's own oversampling
    forced = memory.estimate((512, 512), 8, "out", options=SpectralOptions(method="randomized"), metrics=None)
    assert any(k.startswith("randomized") for k in forced.parts)


def test_model_mode_is_n_squared_plus_one_block():
    est = memory.estimate((4096, 4096), 1000, "model", metrics=None)
    assert est.parts["model Gram 1000 x 1000"] == 3 * 1000**2 * 8
    assert est.parts["row block"] == memory.MODEL_BLOCK_BYTES


def test_factored_lora_holds_factors_not_dense_models():
    est = memory.estimate((4096, 4096), 50, "model", ranks=(8,) * 50, metrics=None)
    assert est.parts["all factors (factored model mode)"] == 50 * 8 * (4096 + 4096) * 8
    assert "one model" not in est.parts and est.parts["one model (factors)"] == 8 * 8192 * 12


def test_metrics_sums_are_counted_and_capped():
    small = memory.estimate((64, 32), 10, "out", metrics=MetricsOptions(folds=5))
    assert small.parts["metrics fold/group sums (5 folds)"] == 7 * 64 * 64 * 8
    big = memory.estimate((16000, 16000), 10, "out", metrics=MetricsOptions(max_memory_mb=100))
    assert big.parts["metrics fold/group sums (5 folds)"] == 100 << 20
    assert memory.estimate((64, 32), 10, "out", metrics=MetricsOptions(group_by="none", folds=0)).parts[
        "metrics fold/group sums (0 folds)"] == 0


def test_budget_from_env_and_default(monkeypatch):
    monkeypatch.setenv(memory.ENV_BUDGET, "512")
    assert memory.budget_bytes() == 512 << 20
    for bad in ("lots", "-5", "0"):
        monkeypatch.setenv(memory.ENV_BUDGET, bad)
        with pytest.raises(OptionError, match=memory.ENV_BUDGET):
            memory.budget_bytes()
    monkeypatch.delenv(memory.ENV_BUDGET)
    phys = memory.physical_memory()
    assert phys is None or memory.budget_bytes() == phys // 2


def test_check_refuses_with_estimate_and_cheaper_mode():
    with pytest.raises(memory.MemoryBudgetError) as info:
        memory.check((16000, 64), 400, "out", "view 'full' of 'big'", metrics=None, budget=1 * GiB)
    msg = str(info.value)
    assert "\n" not in msg and "view 'full' of 'big'" in msg and "16000 x 64" in msg
    assert "Gram 16000 x 16000 float64" in msg and "1.0 GiB" in msg and memory.ENV_BUDGET in msg
    assert "in-mode would need about" in msg  # 64 x 64 fits
    assert memory.check((16000, 64), 400, "in", "x", metrics=None, budget=1 * GiB).total < GiB


@pytest.fixture
def family(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    return write_family(tmp_path / "fam", {f"m{i}": rng.standard_normal((40, 30)) for i in range(4)})


def test_analysis_refused_before_any_tensor_is_read(family, monkeypatch, tmp_path):
    monkeypatch.setenv(memory.ENV_BUDGET, "0.01")  # 10 KiB: the 40 x 40 Gram alone is 38 KiB
    fam = load_family(str(family))

    def no_read(*a, **k):
        raise AssertionError("a tensor was read before the memory check")

    monkeypatch.setattr(readers, "load_tensor", no_read)
    with pytest.raises(memory.MemoryBudgetError, match="over the memory budget"):
        analyze(fam, "layers.0")
    with pytest.raises(memory.MemoryBudgetError):
        analyze_cached(fam, "layers.0", cache=ResultCache())
    assert not list((tmp_path / "cache").rglob("*.sxr"))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(["--quiet", "analyze", str(family), "--layer", "layers.0", "--no-cache"])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "needs about" in err.getvalue()


def test_analysis_runs_within_budget(family, monkeypatch):
    monkeypatch.setenv(memory.ENV_BUDGET, "256")
    res = analyze(load_family(str(family)), "layers.0", metrics=None)
    assert res.spectrum.eigenvalues.shape == (40,)


def test_metrics_release_what_they_no_longer_read_before_the_null(tmp_path, monkeypatch):
    # The fold Grams, their stacking buffers, the models' stack and own bases are done with
    # before the null's draws (the largest temporaries at real size): none is held by then.
    from explorer.metrics import local_passes, passes

    rng = np.random.default_rng(1)
    fam = load_family(str(write_family(tmp_path / "fam", {f"m{i}": rng.standard_normal((40, 30)) for i in range(12)})))
    seen: dict = {}
    finish = local_passes.finish_sums
    monkeypatch.setattr(local_passes, "finish_sums", lambda plan, part: seen.setdefault("sums", finish(plan, part)))
    measure = local_passes.measure_models
    monkeypatch.setattr(local_passes, "measure_models", lambda items, ctx: seen.setdefault("measured", measure(items, ctx)))
    null = passes.side_null

    def watched(*args, **kwargs):
        sums, measured = seen["sums"], seen["measured"]
        seen["at_null"] = (list(measured.stack), list(sums.parts._grams), [g._buf for g in sums.parts._grams])
        return null(*args, **kwargs)

    monkeypatch.setattr(passes, "side_null", watched)
    res = analyze(fam, "layers.0.weight")
    assert res.metrics.kernel is not None and res.metrics.heldout is not None  # the stack and folds were used
    assert seen["at_null"] == ([], [], [])
