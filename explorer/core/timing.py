"""Where an analysis spends its time: named stages, recorded only when someone asks.

The pipeline, the engine and the metrics wrap their stages in :func:`stage` (``read``, ``gram``,
``eigen``, ``metrics: folds`` ...).  Nothing is recorded unless a caller opened
:func:`recording` in the same thread (the bench does; the app and the CLI do not), so the cost
on the normal path is one context-variable lookup per stage.

Stages nest, and a nested stage is recorded under its path (``metrics/k-fold bases/eigen``), so
one kernel (``eigen``, ``gram``, ``read``) called from several places is told apart.  Times are
*exclusive*: a nested stage's time is subtracted from its parent's, so the stages of one run add
up to its wall time.  :func:`timed_iter` charges the time spent inside an iterator's ``next`` (where
files are read and decoded) to one stage.

:func:`watching` registers a callback told the name of every stage entered in the block (this
thread / context only): the thread policy re-measures the machine at stage boundaries
(:class:`explorer.core.threads.FairShare`).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["StageTimes", "recording", "stage", "timed_iter", "watching"]


class StageTimes:
    """Seconds per stage path (exclusive of nested stages), in first-seen order.

    Attributes
    ----------
    seconds : dict of str -> float
        Keyed by path, e.g. ``decomposition/read``.
    calls : dict of str -> int
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list] = []  # [path, start, time charged to nested stages]

    def _enter(self, name: str) -> None:
        path = f"{self._stack[-1][0]}/{name}" if self._stack else name
        self._stack.append([path, time.perf_counter(), 0.0])

    def _exit(self) -> None:
        path, start, nested = self._stack.pop()
        total = time.perf_counter() - start
        self.seconds[path] = self.seconds.get(path, 0.0) + total - nested
        self.calls[path] = self.calls.get(path, 0) + 1
        if self._stack:
            self._stack[-1][2] += total

    def by_leaf(self) -> dict[str, float]:
        """Seconds summed by the last component of each path (all ``.../eigen`` together)."""
        out: dict[str, float] = {}
        for path, sec in self.seconds.items():
            leaf = path.rsplit("/", 1)[-1]
            out[leaf] = out.get(leaf, 0.0) + sec
        return out

    def under(self, prefix: str) -> float:
        """Seconds of ``prefix`` and everything nested in it."""
        return float(sum(s for p, s in self.seconds.items() if p == prefix or p.startswith(prefix + "/")))

    @property
    def total(self) -> float:
        """Sum of every stage's exclusive time (the wall time of the recorded work)."""
        return float(sum(self.seconds.values()))


_current: ContextVar[StageTimes | None] = ContextVar("explorer_stage_times", default=None)
_watchers: ContextVar[tuple[Callable[[str], None], ...]] = ContextVar("explorer_stage_watchers", default=())


@contextmanager
def watching(callback: Callable[[str], None]) -> Iterator[None]:
    """Call ``callback(name)`` as each stage is entered inside the block (this thread / context only)."""
    token = _watchers.set(_watchers.get() + (callback,))
    try:
        yield
    finally:
        _watchers.reset(token)


@contextmanager
def recording() -> Iterator[StageTimes]:
    """Record the stages run inside the block (this thread / context only)."""
    times = StageTimes()
    token = _current.set(times)
    try:
        yield times
    finally:
        _current.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the block's time to ``name`` when recording; a no-op otherwise (watchers are told first)."""
    for callback in _watchers.get():
        callback(name)
    times = _current.get()
    if times is None:
        yield
        return
    times._enter(name)
    try:
        yield
    finally:
        times._exit()


def timed_iter(items: Iterable[T], name: str = "read") -> Iterator[T]:
    """Yield from ``items``, charging the time spent producing each item to ``name``."""
    it = iter(items)
    while True:
        with stage(name):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item
