"""One read per analysis (catalog.views.held) and the stage recorder (core.timing).

An analysis passes over the models three times (decomposition, two metrics passes); within the
budget the files are read once and the kept items replayed, with identical results.
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from explorer.core import timing
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze
from explorer.sources.family import Family
from explorer.sources.resolve import load_family
from tests.helpers import write_adapter


@pytest.fixture()
def lora_dir(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        write_adapter(tmp_path / f"a{i}", {"layers.0.q": (rng.standard_normal((4, 24)), rng.standard_normal((20, 4)))}, 4)
    return tmp_path


def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    original = Family.tensor

    def counting(self, model, name):
        reads.append(f"{model.name}:{name}")
        return original(self, model, name)

    monkeypatch.setattr(Family, "tensor", counting)
    return reads


@pytest.mark.parametrize("view", ["A", "B", "dW"])
def test_each_tensor_is_read_once_per_analysis(lora_dir, monkeypatch, view):
    fam = load_family(str(lora_dir))
    reads = _count_reads(monkeypatch)
    kept = analyze(fam, "layers.0.q", view=view)
    per_model = 2 if view == "dW" else 1
    assert len(reads) == 6 * per_model and len(set(reads)) == len(reads)
    first = set(reads)
    # Without keeping, every pass reads everything again (three passes, or two where the metrics'
    # first pass also gives the decomposition its Gram); the numbers are the same.
    import explorer.pipeline.analyze as pipeline

    monkeypatch.setattr(pipeline, "held", lambda stream, max_bytes: stream)
    reads.clear()
    streamed = analyze(fam, "layers.0.q", view=view)
    counts = Counter(reads)
    assert set(counts) == set(first) and len(set(counts.values())) == 1 and min(counts.values()) in (2, 3)
    np.testing.assert_array_equal(kept.spectrum.eigenvalues, streamed.spectrum.eigenvalues)
    np.testing.assert_array_equal(kept.metrics.energy_one, streamed.metrics.energy_one)
    np.testing.assert_array_equal(kept.metrics.heldout.kfold, streamed.metrics.heldout.kfold)


def test_streams_again_when_the_factors_exceed_the_budget(lora_dir, monkeypatch):
    from explorer.catalog import views

    fam = load_family(str(lora_dir))
    reads = _count_reads(monkeypatch)
    stream = views.held(views.stream_for_view(fam, fam_group(fam), "B"), max_bytes=100)
    for _ in range(3):
        assert len(list(stream.open())) == 6
    assert len(reads) == 18  # nothing kept: every pass reads the files
    reads.clear()
    stream = views.held(views.stream_for_view(fam, fam_group(fam), "B"), max_bytes=1 << 20)
    it = stream.open()
    next(it)
    it.close()  # an abandoned pass is not replayed
    for _ in range(3):
        assert len(list(stream.open())) == 6
    assert len(reads) == 1 + 6


def fam_group(fam):
    from explorer.catalog.groups import build_catalog, find_group

    return find_group(build_catalog(fam), "layers.0.q")


def test_stage_times_nest_and_are_exclusive():
    with timing.recording() as rec:
        with timing.stage("outer"):
            time.sleep(0.02)
            with timing.stage("inner"):
                time.sleep(0.03)
            list(timing.timed_iter(iter([1, 2]), "read"))
    assert set(rec.seconds) == {"outer", "outer/inner", "outer/read"}
    assert rec.seconds["outer/inner"] >= 0.03 and 0.02 <= rec.seconds["outer"] < 0.03 + 0.02
    assert rec.calls["outer/read"] == 3  # two items and the final StopIteration
    assert rec.under("outer") == pytest.approx(rec.total)
    assert rec.by_leaf()["inner"] == rec.seconds["outer/inner"]


def test_nothing_is_recorded_without_a_recorder():
    with timing.stage("x"):
        pass
    with timing.recording() as rec:
        pass
    assert rec.seconds == {}


def test_an_analysis_records_its_stages(lora_dir):
    fam = load_family(str(lora_dir))
    with timing.recording() as rec:
        analyze(fam, "layers.0.q", view="B", options=SpectralOptions(k_store=8))
    stages = set(rec.seconds)
    # The metrics' first pass runs inside the decomposition (it gives it its Gram).
    for path in ("decomposition/pass 1: fold and group sums/read", "metrics/k-fold bases",
                 "metrics/pass 2: measure models", "metrics/null"):
        assert path in stages, stages
    assert any(p.endswith("/eigen") for p in stages) and any(p.endswith("/gram") for p in stages)


def test_upcast_and_finite_check_match_torch():
    # The reads' numpy upcast and NaN/Inf check give torch's own results, special values included.
    import torch

    from explorer.core.errors import MemberError
    from explorer.core.tensors import check_finite, upcast

    special = torch.tensor([0.0, -0.0, 1e-40, -3.5, 65504.0, 3e38, float("inf"), -float("inf"), float("nan")])
    vals = torch.cat([special, torch.randn(199, dtype=torch.float32) * 1e3])
    for dt in (torch.bfloat16, torch.float16):
        t = vals.to(dt).reshape(-1, 13)[:, ::2]  # a strided view, as a sliced read gives
        got, ref = upcast(t), t.to(torch.float32)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert torch.equal(torch.isnan(got), torch.isnan(ref)) and torch.equal(got.nan_to_num(0.0), ref.nan_to_num(0.0))
    f64 = torch.randn(4, 5, dtype=torch.float64)
    assert upcast(f64) is f64
    for dt in (torch.float32, torch.float64):
        check_finite(torch.randn(3, 4, dtype=dt), "m", "w", "f.safetensors")
        for bad in (float("nan"), float("inf"), -float("inf")):
            t = torch.randn(3, 4, dtype=dt)
            t[2, 1] = bad
            with pytest.raises(MemberError, match=r"model 'm': tensor 'w' in f.safetensors holds NaN or Inf"):
                check_finite(t, "m", "w", "f.safetensors")
