"""Thread policy: one heavy analysis at a time per process, limits restored, fair share measured."""
from __future__ import annotations

import threading

import pytest
import torch

from explorer.core import threads
from explorer.core.errors import OptionError


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
