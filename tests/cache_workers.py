"""Child-process bodies for tests/test_cache_crash.py (started with the "spawn" context).

They import :mod:`explorer.pipeline.cache` alone, without the package ``__init__`` (which imports torch),
so each of the many children starts in a fraction of a second.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cache_module():
    """``explorer.pipeline.cache``, importing the package without running its ``__init__`` when not loaded yet."""
    if "explorer" not in sys.modules:
        pkg = types.ModuleType("explorer")
        pkg.__path__ = [str(ROOT / "explorer")]
        sys.modules["explorer"] = pkg
    return importlib.import_module("explorer.pipeline.cache")


def payload(i: int, size: int = 1 << 19) -> tuple[dict[str, np.ndarray], dict]:
    """The deterministic entry of key number ``i``: 4 MiB of float64 and a little JSON."""
    rng = np.random.default_rng(i)
    return {"a": rng.standard_normal(size), "b": np.arange(i + 3, dtype=np.int64)}, {"i": i, "note": "x" * 100}


def key(i: int) -> str:
    return hashlib.sha256(f"crash-test-{i}".encode()).hexdigest()


def store_loop(root: str, n_keys: int, ready) -> None:
    """Store the entries of ``n_keys`` keys over and over until killed."""
    cache = cache_module().ResultCache(root)
    entries = [payload(i) for i in range(n_keys)]
    ready.set()
    j = 0
    while True:
        arrays, meta = entries[j % n_keys]
        cache.store(key(j % n_keys), arrays, meta)
        j += 1


def hold_lock(root: str, i: int, ready) -> None:
    """Take the per-key lock as a computing process would, then wait to be killed."""
    cache = cache_module().ResultCache(root)
    with cache.lock(key(i)):
        ready.set()
        while True:
            time.sleep(0.05)


def compute_once(root: str, i: int, counter: str, barrier, results) -> None:
    """Ask for entry ``i`` through get_or_compute; record each computation in ``counter``."""
    cache = cache_module().ResultCache(root)

    def compute():
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # long enough that the other processes arrive while this one computes
        return payload(i)

    barrier.wait()
    (arrays, meta), hit = cache.get_or_compute(key(i), compute)
    blob = cache_module().encode(arrays, meta, key(i))
    results.put((os.getpid(), hit, hashlib.sha256(blob).hexdigest(), cache.path(key(i)).read_bytes() == blob))
