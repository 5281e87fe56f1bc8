"""Analyses on a real Dask cluster (``distributed.LocalCluster``, processes, 2 workers): the same
results as on this machine (float64 eigenvalues within 1e-12 relative, the same cache key and
JSON), a worker killed mid-analysis, an unreachable scheduler, progress from the workers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, WorkerPlugin

from explorer.catalog.groups import build_catalog
from explorer.cluster.connect import close_all
from explorer.cluster.shards import shard_bounds
from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.pipeline.analyze import analyze, analyze_cached
from explorer.pipeline.atlas import run_atlas
from explorer.pipeline.cache import ResultCache
from explorer.sources.resolve import load_family

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "zoo:digits-mlp-finetune"
LORA = "zoo:digits-lora"
# The null is drawn on the client from per-model numbers, the same code either way: few draws.
FAST = MetricsOptions(null_draws=20)


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster of 2 worker processes (their nannies restart a killed one)."""
    from distributed import LocalCluster

    # Worker processes import explorer (and this module's plugin) from the repository.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([old] if old else []))
    # A spawned worker re-runs the parent's __main__ script; after an AppTest in this session that
    # is Streamlit's generated script (it fails outside Streamlit): spawn from a bare __main__.
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    try:
        yield cluster.scheduler_address
    finally:
        close_all()
        cluster.close()
        sys.modules["__main__"] = main
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _lora_group(fam) -> str:
    return next(g.name for g in build_catalog(fam) if g.kind == "lora")


def _close(a, b, path="") -> None:
    """Two JSON documents equal: the same keys and strings, numbers within 1e-9 (relative to 1).

    Singular values are compared squared, relative to the largest: at the numerical floor of a
    rank-deficient Gram (eigenvalues ~1e-15 of the top, or clamped to 0) the square root turns
    a difference in the last bits of an eigenvalue into 1e-7.
    """
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if key == "singular_values" and a[key]:
                sa, sb = np.square(a[key]), np.square(b[key])
                assert len(sa) == len(sb) and np.max(np.abs(sa - sb)) <= 1e-12 * sa[0], f"{path}.{key}"
                continue
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def _same(local, remote) -> None:
    ev, er = local.spectrum.eigenvalues, remote.spectrum.eigenvalues
    assert np.max(np.abs(ev - er)) <= 1e-12 * ev[0]
    k = min(16, local.spectrum.basis.shape[1])
    np.testing.assert_allclose(np.abs(remote.spectrum.basis[:, :k].T @ local.spectrum.basis[:, :k]).diagonal(), 1.0,
                               atol=1e-8)
    _close(local.to_json(), remote.to_json())


@pytest.mark.parametrize("source, view, mode, center", [
    (DIGITS, "full", "out", "model"),  # dense, by shards of models: folds, groups, leave-one-out
    (DIGITS, "full", "in", "none"),
    (LORA, "dW", "out", "none"),  # LoRA kept factored on the workers
    (LORA, "A", None, "none"),  # the view's mode (in)
    (DIGITS, "full", "model", "none"),  # model mode: the whole group as one task
])
def test_cluster_result_is_the_local_one(scheduler, source, view, mode, center):
    fam = load_family(source)
    layer = "layers.1" if view == "full" else _lora_group(fam)
    opts = SpectralOptions(mode=mode, center=center)
    local = analyze(fam, layer, view=view, options=opts, metrics=FAST)
    seen = []
    remote = analyze(fam, layer, view=view, options=opts, metrics=FAST, scheduler=scheduler,
                     progress=lambda done, total, label: seen.append((done, total, label)))
    _same(local, remote)
    assert seen and all(0 <= d <= t for d, t, _ in seen)
    assert any("cluster" in label for _, _, label in seen)  # progress from the workers reached us
    if mode != "model":  # shards: the models-done counter reaches N
        assert any(d == t == len(fam) for d, t, label in seen if "cluster" in label)


def test_cluster_result_fills_the_local_cache(scheduler, tmp_path):
    cache = ResultCache(tmp_path)
    remote = analyze_cached(DIGITS, "layers.1", "full", SpectralOptions(), FAST, cache=cache, scheduler=scheduler)
    local = analyze_cached(DIGITS, "layers.1", "full", SpectralOptions(), FAST, cache=cache)
    assert not remote.from_cache and local.from_cache and local.cache_key == remote.cache_key
    fresh = analyze_cached(DIGITS, "layers.1", "full", SpectralOptions(), FAST, cache=ResultCache(tmp_path / "other"))
    assert fresh.cache_key == remote.cache_key
    _same(fresh, local)


def test_cli_scheduler_gives_the_local_json(scheduler, tmp_path):
    docs = []
    for extra, name in (([], "local"), (["--scheduler", scheduler], "remote")):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", "explorer", "--quiet", "analyze", LORA, "--layer", "layers.0",
                               "--view", "B", "--json", str(out), "--no-cache", "--null-draws", "20", *extra],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        docs.append(json.loads(out.read_text()))
    _close(docs[0], docs[1])


class KillFirstTask(WorkerPlugin):
    """Worker plugin: the first worker to start a task whose key holds ``prefix`` dies on the spot (once)."""

    name = "kill-first-task"

    def __init__(self, marker: str, prefix: str):
        self.marker, self.prefix = marker, prefix

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or self.prefix not in str(key):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # the retried task (or another shard) runs normally
        os.close(fd)
        os._exit(1)


def test_worker_killed_mid_analysis_gives_the_same_result(scheduler, tmp_path):
    marker = tmp_path / "killed"
    fam = load_family(DIGITS)
    local = analyze(fam, "layers.1", view="full", options=SpectralOptions(center="model"), metrics=FAST)
    with Client(scheduler) as admin:
        admin.register_plugin(KillFirstTask(str(marker), "sums_task"))
        try:
            remote = analyze(fam, "layers.1", view="full", options=SpectralOptions(center="model"), metrics=FAST,
                             scheduler=scheduler)
        finally:
            admin.unregister_worker_plugin(KillFirstTask.name)
            admin.wait_for_workers(2, timeout=60)
    assert marker.exists()  # a worker really died while running a shard
    _same(local, remote)


def test_atlas_on_the_cluster_is_the_local_atlas(scheduler, tmp_path):
    fam = load_family(LORA)
    kw = dict(modules=r"^layers\.[01]\b", views=("A", "B"), metrics=FAST, init_check=False)
    local = run_atlas(fam, cache=ResultCache(tmp_path / "local"), **kw)
    seen = []
    remote = run_atlas(fam, cache=ResultCache(tmp_path / "remote"), scheduler=scheduler,
                       progress=lambda done, total, label: seen.append(label), **kw)
    assert len(remote.entries) == 4 and "atlas (cluster)" in seen
    _close(local.to_json(), remote.to_json())
    # Every entry was stored by the cluster run: a local rerun on that cache computes nothing.
    again = run_atlas(fam, cache=ResultCache(tmp_path / "remote"), **kw)
    assert all(e.analysis.from_cache for e in again.entries)


def test_unreachable_scheduler_is_one_message_exit_2():
    proc = subprocess.run([sys.executable, "-m", "explorer", "--quiet", "analyze", DIGITS, "--layer", "layers.1",
                           "--no-cache", "--scheduler", "tcp://127.0.0.1:9"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: scheduler 'tcp://127.0.0.1:9'"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_environment_names_the_scheduler(monkeypatch):
    from explorer.cluster.connect import SCHEDULER_ENV, scheduler_address

    monkeypatch.setenv(SCHEDULER_ENV, " tcp://10.0.0.1:8786 ")
    assert scheduler_address() == "tcp://10.0.0.1:8786"
    assert scheduler_address("") is None  # an explicit empty value means this machine
    monkeypatch.delenv(SCHEDULER_ENV)
    assert scheduler_address() is None


def test_shard_bounds_cover_every_model_once():
    for n in (1, 2, 5, 97):
        for workers in (1, 2, 7):
            b = shard_bounds(n, workers)
            assert b[0][0] == 0 and b[-1][1] == n and all(x[1] == y[0] for x, y in zip(b, b[1:]))
            assert len(b) == min(n, 2 * workers) and all(i1 > i0 for i0, i1 in b)


def test_local_path_never_imports_dask():
    code = ("import sys; from explorer.pipeline.analyze import analyze; from explorer.sources.resolve import load_family;"
            "from explorer.metrics.results import MetricsOptions;"
            "analyze(load_family('zoo:planted'), 'layers.0', metrics=MetricsOptions(null_draws=4));"
            "print('distributed' in sys.modules or 'dask' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_member_with_nan_on_a_worker_is_skipped_as_locally(scheduler, tmp_path):
    from tests.helpers import write_family

    rng = np.random.default_rng(3)
    mats = {f"m{i:02d}": rng.standard_normal((20, 16)) for i in range(9)}
    mats["m04"][3, 5] = np.nan
    fam = load_family(str(write_family(tmp_path / "fam", mats)))
    local = analyze(fam, "layers.0", metrics=FAST)
    remote = analyze(fam, "layers.0", metrics=FAST, scheduler=scheduler)
    assert [s.name for s in remote.skipped] == [s.name for s in local.skipped] == ["m04"]
    _same(local, remote)


def test_app_sidebar_scheduler_unreachable_is_one_error(monkeypatch, tmp_path):
    from tests.helpers import start_app, write_family

    rng = np.random.default_rng(4)
    src = write_family(tmp_path / "fresh", {f"m{i}": rng.standard_normal((12, 10)) for i in range(6)})
    monkeypatch.setenv("EXPLORER_SCHEDULER", "tcp://127.0.0.1:9")
    at = start_app("pages/1_Spectrum.py", source=str(src), layer="layers.0")
    assert [t.value for t in at.sidebar.text_input if t.label == "Scheduler"] == ["tcp://127.0.0.1:9"]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("scheduler 'tcp://127.0.0.1:9'"), errors
    assert not at.exception
