"""The content-addressed results cache: hit, miss, corruption, key invalidation, concurrency."""
from __future__ import annotations

import os
from operator import attrgetter
from pathlib import Path

import numpy as np
import pytest

from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.pipeline.analyze import analyze, analyze_cached, cache_key
from explorer.pipeline.cache import ResultCache, decode, encode, file_fingerprint
from explorer.sources.resolve import load_family

MO = MetricsOptions(null_draws=2, folds=3)


@pytest.fixture
def fam_dir(family_factory, monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    mats = {f"m{i}": {"layers.0.weight": rng.standard_normal((8, 6))} for i in range(5)}
    labels = {f"m{i}": {"group": "ab"[i % 2]} for i in range(5)}
    return family_factory("fam", mats, labels)


def _counting(calls):
    return lambda done, total, label: calls.append(label)


def _entries(root: Path) -> list[Path]:
    return sorted((root / "cache" / "results").glob("*/*.sxr"))


def test_encode_decode_roundtrip_and_damage():
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)}
    blob = encode(arrays, {"x": 1.5, "names": ["p"]})
    got = decode(blob)
    assert got is not None
    np.testing.assert_array_equal(got[0]["a"], arrays["a"])
    assert got[1] == {"x": 1.5, "names": ["p"]}
    for pos in (2, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        assert decode(bytes(bad)) is None
    assert decode(blob[:-5]) is None
    assert decode(b"") is None


def test_miss_then_hit_identical(fam_dir, tmp_path):
    calls: list[str] = []
    a = analyze_cached(str(fam_dir), "layers.0", metrics=MO, progress=_counting(calls))
    assert not a.from_cache and calls
    n_calls = len(calls)
    b = analyze_cached(str(fam_dir), "layers.0", metrics=MO, progress=_counting(calls))
    assert b.from_cache and len(calls) == n_calls  # nothing read or computed again
    assert a.cache_key == b.cache_key == cache_key(str(fam_dir), "layers.0", metrics=MO)
    assert len(_entries(tmp_path)) == 1
    np.testing.assert_array_equal(a.spectrum.eigenvalues, b.spectrum.eigenvalues)
    np.testing.assert_array_equal(a.metrics.heldout.kfold, b.metrics.heldout.kfold)
    assert a.to_json() | {"cache_key": None} == b.to_json() | {"cache_key": None}


def test_repeated_uncached_runs_are_identical(fam_dir):
    fam = load_family(str(fam_dir))
    a = analyze(fam, "layers.0", metrics=MO)
    b = analyze(fam, "layers.0", metrics=MO)
    np.testing.assert_array_equal(a.spectrum.basis, b.spectrum.basis)
    for name in ("energy_one", "energy_two", "coords", "heldout.kfold", "null.cum_median", "overlaps.own"):
        np.testing.assert_array_equal(attrgetter(name)(a.metrics), attrgetter(name)(b.metrics))


def test_corrupted_entry_is_recomputed(fam_dir, tmp_path):
    a = analyze_cached(str(fam_dir), "layers.0", metrics=MO)
    (entry,) = _entries(tmp_path)
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0x5A
    entry.write_bytes(bytes(blob))
    calls: list[str] = []
    b = analyze_cached(str(fam_dir), "layers.0", metrics=MO, progress=_counting(calls))
    assert not b.from_cache and calls  # recomputed, not served
    np.testing.assert_array_equal(a.spectrum.eigenvalues, b.spectrum.eigenvalues)
    assert decode(entry.read_bytes()) is not None  # and rewritten intact
    entry.write_bytes(b"")  # a truncated entry too
    assert not analyze_cached(str(fam_dir), "layers.0", metrics=MO).from_cache


def test_key_follows_content_and_options(fam_dir):
    src = str(fam_dir)
    base = cache_key(src, "layers.0")
    assert base == cache_key(src, "layers.0")
    assert cache_key(src, "layers.0", options=SpectralOptions(mode="in")) != base
    assert cache_key(src, "layers.0", metrics=MetricsOptions(folds=4)) != base
    assert cache_key(src, "layers.0", metrics=None) != base
    f = next(Path(fam_dir).rglob("m0.safetensors"))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(src, "layers.0") != base
    fp = file_fingerprint(f)
    assert set(fp) == {"path", "size", "mtime_ns", "header_sha256"}


def test_result_io_roundtrip(fam_dir, tmp_path):
    from explorer.pipeline import result_io

    fam = load_family(str(fam_dir))
    a = analyze(fam, "layers.0", metrics=MO)
    path = tmp_path / "r.sxr"
    result_io.save(a, str(path))
    b = result_io.load(str(path))
    assert b.group == a.group and b.options == a.options and b.metrics_options == a.metrics_options
    assert b.labels == a.labels and b.models == a.models
    assert b.metrics.groups.names == a.metrics.groups.names and b.metrics.notes == a.metrics.notes
    assert b.metrics.mp_edge_evr == a.metrics.mp_edge_evr
    np.testing.assert_array_equal(b.metrics.heldout.folds, a.metrics.heldout.folds)
    np.testing.assert_array_equal(b.spectrum.basis, a.spectrum.basis)
    assert b.to_json() == a.to_json()
    path.write_bytes(path.read_bytes()[:-3])
    from explorer.core.errors import InputError

    with pytest.raises(InputError, match="checksum"):
        result_io.load(str(path))


# Workers are plain subprocesses, not multiprocessing children: "fork" deadlocks once torch or
# playwright threads exist, and "spawn"/"forkserver" re-import the parent's __main__, which after an
# AppTest run is a Streamlit page that would execute (and write to the cache) in every child.
_WORKER = """
import json, os, sys, time, hashlib
import torch
torch.set_num_threads(1)  # four workers on a small machine would only fight for cores
from explorer.pipeline.analyze import analyze_cached
from explorer.metrics.results import MetricsOptions
src, log, ready, go = sys.argv[1:5]
open(ready, "w").close()
while not os.path.exists(go):  # a file barrier: all four start the request together
    time.sleep(0.01)
def progress(done, total, label):
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {label}\\n")
res = analyze_cached(src, "layers.0", metrics=MetricsOptions(null_draws=2, folds=3), progress=progress)
print(json.dumps([res.cache_key, hashlib.sha256(res.spectrum.eigenvalues.tobytes()).hexdigest(), res.from_cache]))
"""


def test_concurrent_processes_compute_once(fam_dir, tmp_path):
    import json
    import subprocess
    import sys
    import time

    log, go = tmp_path / "log.txt", tmp_path / "go"
    env = {**os.environ, "EXPLORER_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(fam_dir), str(log), str(tmp_path / f"ready{i}"),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(4)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
        assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    computing = {line.split()[0] for line in log.read_text().splitlines()}
    assert len(computing) == 1  # exactly one process read the models
    assert sum(1 for r in results if not r[2]) == 1
    assert len({(r[0], r[1]) for r in results}) == 1  # everybody got the same bytes
    assert len(_entries(tmp_path)) == 1


def test_cache_store_is_atomic(tmp_path):
    cache = ResultCache(tmp_path / "results")
    cache.store("ab" * 32, {"x": np.ones(3)}, {"k": 1})
    files = list((tmp_path / "results").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    (arrays, meta), hit = cache.get_or_compute("ab" * 32, lambda: pytest.fail("must not compute"))
    assert hit and meta == {"k": 1}


def test_analyze_cached_accepts_a_loaded_family(fam_dir):
    fam = load_family(str(fam_dir))
    a = analyze_cached(fam, "layers.0", metrics=MO)
    b = analyze_cached(str(fam_dir), "layers.0", metrics=MO)
    assert not a.from_cache and b.from_cache and a.cache_key == b.cache_key


def test_swapped_entries_are_recomputed_not_served(fam_dir, tmp_path):
    """A valid entry of another key copied onto this key's file is caught: the key is in the payload."""
    out_mode = analyze_cached(str(fam_dir), "layers.0", metrics=MO)
    in_mode = analyze_cached(str(fam_dir), "layers.0", options=SpectralOptions(mode="in"), metrics=MO)
    cache = ResultCache()
    p_out, p_in = cache.path(out_mode.cache_key), cache.path(in_mode.cache_key)
    blob_out, blob_in = p_out.read_bytes(), p_in.read_bytes()
    assert decode(blob_out) is not None and decode(blob_in) is not None  # each is intact on its own
    assert decode(blob_out, out_mode.cache_key) is not None and decode(blob_out, in_mode.cache_key) is None
    p_out.write_bytes(blob_in)
    p_in.write_bytes(blob_out)
    calls: list[str] = []
    again_out = analyze_cached(str(fam_dir), "layers.0", metrics=MO, progress=_counting(calls))
    assert not again_out.from_cache and calls and again_out.spectrum.mode == "out"
    np.testing.assert_array_equal(again_out.spectrum.eigenvalues, out_mode.spectrum.eigenvalues)
    again_in = analyze_cached(str(fam_dir), "layers.0", options=SpectralOptions(mode="in"), metrics=MO)
    assert not again_in.from_cache and again_in.spectrum.mode == "in"
    np.testing.assert_array_equal(again_in.spectrum.eigenvalues, in_mode.spectrum.eigenvalues)
    # Rewritten for their own keys: served as hits from now on.
    assert analyze_cached(str(fam_dir), "layers.0", metrics=MO).from_cache
    assert decode(p_out.read_bytes(), out_mode.cache_key) is not None
