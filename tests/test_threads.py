"""Thread policy: one heavy analysis at a time per process, limits restored, fair share measured."""
from __future__ import annotations

import threading

import pytest
import torch

from explorer.core import threads
from explorer.core.errors import OptionError
from explorer.core.timing import stage


def test_heavy_analyses_run_one_at_a_time_and_say_they_wait():
    order: list[str] = []
    waited: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first():
        with threads.heavy_slot(True):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second():
        inside.wait(10)
        with threads.heavy_slot(True, on_wait=lambda: waited.append("second")):
            order.append("second in")

    t1, t2 = threading.Thread(target=first), threading.Thread(target=second)
    t1.start(), t2.start()
    inside.wait(10)
    release.set()
    t1.join(10), t2.join(10)
    assert order == ["first in", "first out", "second in"] and waited == ["second"]


def test_small_work_never_waits_for_the_slot():
    done: list[int] = []

    def small():
        with threads.heavy_slot(False):
            done.append(1)

    with threads.heavy_slot(True):
        t = threading.Thread(target=small)
        t.start()
        t.join(5)
        assert done == [1]


def test_thread_limit_restores_and_small_groups_are_single_threaded():
    before = torch.get_num_threads()
    with threads.thread_limit(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads.thread_limit(None):
        assert torch.get_num_threads() == before
    assert threads.is_small((512, 16), 100) and not threads.is_small((4096, 16), 100)
    assert not threads.is_small((16, 16), 513) and not threads.is_small((16, 16), 10, "cuda")


def test_fair_threads_leaves_our_own_threads_out():
    # Our own (possibly spinning) BLAS threads are not competition: right after a large product,
    # with nothing else running in this test, no limit; a measured limit is always >= 1.
    a = torch.randn(600, 600, dtype=torch.float64)
    _ = a @ a
    got = threads.fair_threads()
    assert got is None or got >= 1


def test_explorer_threads_overrides_the_measurement(monkeypatch):
    monkeypatch.setenv("EXPLORER_THREADS", "3")
    assert threads.fair_threads() == 3
    monkeypatch.setenv("EXPLORER_THREADS", "all")
    assert threads.fair_threads() is None
    monkeypatch.setenv("EXPLORER_THREADS", "many")
    with pytest.raises(OptionError, match="EXPLORER_THREADS"):
        threads.fair_threads()


def test_fair_threads_counts_the_cores_other_processes_keep_busy(monkeypatch):
    # Synthetic /proc samples (busy, all, own ticks) a window apart, on 2 cores: another job
    # that used one core all the window leaves one thread; a browser's 15 % and our own
    # spinning threads leave every core; both cores taken still leave one thread.
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)

    def measured(busy: int, own: int, total: int = 50) -> int | None:
        samples = iter([(1000, 5000, 300), (1000 + busy, 5000 + total, 300 + own)])
        monkeypatch.setattr(threads, "_cpu_sample", lambda: next(samples))
        return threads.fair_threads()

    assert measured(busy=25, own=0) == 1      # one core's worth of another job
    assert measured(busy=4, own=0) is None    # a browser drawing a page
    assert measured(busy=50, own=46) is None  # our own BLAS threads
    assert measured(busy=50, own=0) == 1      # both cores taken: still one thread
    assert measured(busy=13, own=0) == 1      # a core used over half the time counts
    samples = iter([(1, 2, 3), None])
    monkeypatch.setattr(threads, "_cpu_sample", lambda: next(samples))
    assert threads.fair_threads() is None     # no /proc: no limit


def test_cpu_sample_reads_this_machine():
    got = threads._cpu_sample()
    if got is not None:  # Linux
        busy, total, own = got
        assert 0 <= busy <= total and own >= 0
        b = threads.others_busy(0.05)
        assert b is not None and 0.0 <= b <= (threads.os.cpu_count() or 1)


def test_fair_share_revises_the_count_while_it_runs_and_restores_it(monkeypatch):
    # A browser busy at the start (one core) gives one thread; once it is idle the next look
    # (at most one per interval) lifts the limit; a competing job arriving sets it again.
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("EXPLORER_THREADS", raising=False)
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    monkeypatch.setattr(threads, "_last_look", None)
    # The last sample is the one taken on exit, for the next analysis (test below).
    samples = iter([(0, 0, 0), (25, 50, 0), (25, 50, 0), (27, 150, 0), (127, 250, 0), (127, 350, 0)])
    monkeypatch.setattr(threads, "_cpu_sample", lambda: next(samples))
    clock = [0.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    before = torch.get_num_threads()
    seen = []

    def step(name: str) -> None:
        with stage(name):  # the analysis' stages are where the count is revised
            seen.append((name, share.threads))

    with threads.FairShare(interval_s=1.0) as share:
        assert share.threads == 1 and torch.get_num_threads() == 1
        clock[0] = 0.5
        step("read")                    # too soon: no look
        clock[0] = 1.5
        step("gram")                    # the browser went idle: every core
        assert torch.get_num_threads() == before
        clock[0] = 3.0
        step("eigen")                   # another job took both cores: one thread
    assert seen == [("read", 1), ("gram", None), ("eigen", 1)] and share.changes == 2
    assert torch.get_num_threads() == before
    clock[0] = 9.0
    with stage("after"):                # outside the block nothing is measured (samples exhausted)
        pass


def test_fair_share_keeps_a_fixed_count_and_inactive_changes_nothing(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("EXPLORER_THREADS", "1")
    monkeypatch.setattr(threads, "_cpu_sample", lambda: pytest.fail("measured despite EXPLORER_THREADS"))
    with threads.FairShare() as share:
        assert share.threads == 1 and torch.get_num_threads() == 1
        share.revisit()
    assert torch.get_num_threads() == before
    with threads.FairShare(active=False) as share, stage("x"):
        assert torch.get_num_threads() == before and share.threads is None


def test_back_to_back_analyses_measure_since_the_last_one_without_sleeping(monkeypatch):
    # An analysis ending leaves its CPU sample; the next one within RECENT_S measures the other
    # processes since then (here: one core busy all along -> one thread) and sleeps only for
    # what is left of the quarter-second window; a stale sample means a fresh window.
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("EXPLORER_THREADS", raising=False)
    slept: list = []
    monkeypatch.setattr(threads.time, "sleep", slept.append)
    clock = [100.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads, "_last_look", ((0, 0, 0), 99.0))
    samples = iter([(100, 200, 0)] * 3)                 # start (since the last look), revisit base, exit
    monkeypatch.setattr(threads, "_cpu_sample", lambda: next(samples))
    with threads.FairShare() as share:
        assert share.threads == 1
    assert slept == [] and threads._last_look == ((100, 200, 0), 100.0)
    clock[0] = 100.1                                   # 0.1 s later: waits the remaining 0.15 s
    samples = iter([(105, 240, 0)] * 3)
    with threads.FairShare() as share:
        assert share.threads is None                   # 5 of 40 ticks busy: a quarter core, no other job
    assert slept == [pytest.approx(0.15)]
    clock[0] = 200.0                                   # stale: a fresh window (two samples, one sleep)
    samples = iter([(105, 240, 0)] + [(155, 340, 0)] * 3)
    with threads.FairShare() as share:
        assert share.threads == 1
    assert slept == [pytest.approx(0.15), threads.BUSY_WINDOW_S]
