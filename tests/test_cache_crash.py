"""The results cache under crashes and concurrency.

- Writers are SIGKILLed at random points (24 times): a partial entry is never served (``load``
  returns None or the exact checksummed payload), and damaged entries are recomputed.
- Four processes asking for the same key compute it once and all read identical bytes.

Children use the "spawn" start method (fork would copy torch's threads and can deadlock).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sys
import time
import types

import numpy as np
import pytest

from explorer.pipeline.cache import ResultCache, decode, encode
from tests import cache_workers as w

CTX = mp.get_context("spawn")
N_KEYS = 3


@pytest.fixture(autouse=True)
def _plain_main(monkeypatch):
    """Spawn children re-run the parent's ``__main__``; after an AppTest in this process that is a
    Streamlit page (app.py: streamlit + torch, seconds per child).  An empty ``__main__`` keeps
    every child's start-up to importing the worker module."""
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))


def _same(got, i: int) -> bool:
    arrays, meta = w.payload(i)
    return got is not None and got[1] == meta and all(np.array_equal(got[0][k], v) for k, v in arrays.items())


def test_killed_writers_never_leave_a_served_partial_entry(tmp_path):
    root = tmp_path / "results"
    cache = ResultCache(root)
    rng = random.Random(1234)
    served = killed_mid_write = 0
    for trial in range(24):
        ready = CTX.Event()
        proc = CTX.Process(target=w.store_loop, args=(str(root), N_KEYS, ready), daemon=True)
        proc.start()
        assert ready.wait(120), "the writer child did not start"
        # Random points: from before the first write has finished to many writes in.
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        killed_mid_write += bool(list(root.rglob("*.tmp")))
        for i in range(N_KEYS):
            got = cache.load(w.key(i))
            # Either absent or exactly the payload: never a truncated or mixed entry.
            assert got is None or _same(got, i), f"trial {trial}: key {i} served a damaged entry"
            served += got is not None
        for tmp in root.rglob("*.tmp"):  # what a killed writer leaves is never read; clear it per trial
            tmp.unlink()
    assert served > 0
    assert killed_mid_write > 0, "no kill landed during a write; the test would prove nothing"


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_damaged_entry_is_recomputed_not_served(tmp_path, damage):
    cache = ResultCache(tmp_path / "results")
    arrays, meta = w.payload(1, size=1000)
    cache.store(w.key(1), arrays, meta)
    p = cache.path(w.key(1))
    blob = bytearray(p.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) - 17]
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(os.urandom(len(blob)))
    p.write_bytes(bytes(blob))
    assert decode(bytes(blob)) is None
    calls = []

    def compute():
        calls.append(1)
        return arrays, meta

    got, hit = cache.get_or_compute(w.key(1), compute)
    assert calls == [1] and not hit
    assert p.read_bytes() == encode(arrays, meta, w.key(1))
    assert np.array_equal(got[0]["a"], arrays["a"]) and got[1] == meta


def test_a_killed_lock_holder_does_not_block_others(tmp_path):
    root = tmp_path / "results"
    ready = CTX.Event()
    proc = CTX.Process(target=w.hold_lock, args=(str(root), 0, ready), daemon=True)
    proc.start()
    assert ready.wait(120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    got, hit = ResultCache(root).get_or_compute(w.key(0), lambda: w.payload(0, size=100))
    assert not hit and got[1]["i"] == 0


def test_four_concurrent_sessions_compute_once_and_read_identical_bytes(tmp_path):
    root = tmp_path / "results"
    counter = tmp_path / "computed.txt"
    barrier = CTX.Barrier(4)
    results = CTX.Queue()
    procs = [CTX.Process(target=w.compute_once, args=(str(root), 7, str(counter), barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1, "the result was computed more than once"
    assert len({h for _, _, h, _ in got}) == 1, "the sessions read different bytes"
    assert all(same_file for *_, same_file in got)
    assert sorted(hit for _, hit, _, _ in got) == [False, True, True, True]
    assert _same(ResultCache(root).load(w.key(7)), 7)
