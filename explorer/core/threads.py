"""Thread policy: small groups on one thread; heavy analyses one at a time per process.

:func:`single_threaded` runs a block on one thread (torch's intra-op pool and the BLAS/OpenMP
pools), then restores them; :func:`heavy_slot` serialises the heavy analyses of one process, and
:class:`FairShare` leaves the cores that other running jobs use to them (:func:`fair_threads`
at the start, revised at each stage of the analysis).

Small matrices (sides of a few hundred) gain nothing from threads, and on a busy 2-core machine
the hand-offs were measured to cost up to 30x (27 s vs 0.9 s for a 128 x 64 group); one thread
also keeps float results independent of the core count.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from threadpoolctl import threadpool_limits

from explorer.core.errors import OptionError
from explorer.core.timing import watching


class _Pools:
    """torch's intra-op pool and the BLAS/OpenMP pools, set to one count and restored together."""

    def __init__(self) -> None:
        self.torch_before = torch.get_num_threads()
        self._limiter = None

    def set(self, n: int | None) -> None:
        """Use ``n`` threads (None: what torch and the pools had before)."""
        if self._limiter is not None:
            self._limiter.restore_original_limits()
            self._limiter = None
        torch.set_num_threads(self.torch_before if n is None else max(1, int(n)))
        if n is not None:
            self._limiter = threadpool_limits(limits=max(1, int(n)))


@contextmanager
def thread_limit(n: int | None) -> Iterator[None]:
    """Limit torch and the BLAS/OpenMP pools to ``n`` threads (None: unchanged); restore them after."""
    if n is None:
        yield
        return
    pools = _Pools()
    pools.set(n)
    try:
        yield
    finally:
        pools.set(None)


def single_threaded(active: bool = True):
    """Limit torch and the BLAS/OpenMP pools to one thread while ``active``; restore them after."""
    return thread_limit(1 if active else None)


# Seconds over which other processes' CPU use is measured before a heavy analysis.
BUSY_WINDOW_S = 0.25


def _cpu_sample() -> tuple[int, int, int] | None:
    """(busy ticks of every CPU, all ticks of every CPU, this process's ticks), or None without ``/proc``.

    Busy is user + nice + system + irq + softirq of ``/proc/stat``'s ``cpu`` line (idle, iowait
    and steal are not another job's work); this process's own is utime + stime of
    ``/proc/self/stat``, in the same clock ticks.
    """
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        with open("/proc/self/stat") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None  # not Linux: no measurement, no limit
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:7])
    return busy, sum(fields[:8]), int(own[11]) + int(own[12])


def others_busy(window_s: float = BUSY_WINDOW_S) -> float | None:
    """Cores that *other* processes kept busy over the last ``window_s`` seconds (0.0 .. cores).

    This process's threads are left out: BLAS/OpenMP workers spin for a while after each parallel
    region and are not competition.  A sustained CPU-bound job counts about 1 per thread; a
    browser drawing a page about 0.1-0.3 (its bursts average out over the window, where a
    snapshot of runnable tasks counted a rendering browser as a whole competing job and halved
    the app's analyses: 26 s instead of 13 s for a 500-adapter decomposition).  None without ``/proc``.
    """
    first = _cpu_sample()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_sample()
    if second is None:
        return None
    return _busy_between(first, second)


# How long the CPU sample taken as a heavy analysis ends stands in for a fresh window: the next one
# within this many seconds measures the other processes since then instead of sleeping.
RECENT_S = 2.0
# (sample, time.monotonic()) at the end of the last heavy analysis of this process.
_last_look: tuple[tuple[int, int, int], float] | None = None


def _others_busy_since_last() -> float | None:
    """:func:`others_busy`, over the time since the last heavy analysis ended when that was at
    most :data:`RECENT_S` ago (an atlas runs its entries back to back: 0.25 s saved on each),
    waiting only for what is left of :data:`BUSY_WINDOW_S`; a fresh window otherwise."""
    last = _last_look
    age = None if last is None else time.monotonic() - last[1]
    if age is None or not 0.0 <= age <= RECENT_S:
        return others_busy()
    if age < BUSY_WINDOW_S:
        time.sleep(BUSY_WINDOW_S - age)
    current = _cpu_sample()
    return None if current is None else _busy_between(last[0], current)


def _busy_between(first: tuple[int, int, int], second: tuple[int, int, int]) -> float:
    """Cores other processes kept busy between two :func:`_cpu_sample` readings."""
    busy, total, own = (b - a for a, b in zip(first, second))
    return max(0.0, (busy - own) / total * (os.cpu_count() or 1)) if total > 0 else 0.0


def _fixed_threads() -> tuple[bool, int | None]:
    """``EXPLORER_THREADS``: (set, count); count None for ``all`` (no limit)."""
    fixed = os.environ.get("EXPLORER_THREADS", "").strip()
    if not fixed:
        return False, None
    if fixed == "all":
        return True, None
    try:
        return True, max(1, int(fixed))
    except ValueError:
        raise OptionError(f"EXPLORER_THREADS must be a positive integer or 'all', got {fixed!r}") from None


def _threads_for(busy: float | None) -> int | None:
    """The cores other processes leave free (a core counts when used at least half the time)."""
    if busy is None:
        return None
    others = int(busy + 0.5)  # busy >= 0: rounds half up
    return None if others == 0 else max(1, (os.cpu_count() or 1) - others)


def fair_threads() -> int | None:
    """Threads a heavy analysis should use: the cores that other running work leaves free.

    With another CPU-bound job on a 2-core machine, an analysis using both cores was measured at
    12x its quiet time (BLAS/OpenMP threads that wait on a descheduled sibling), where one thread,
    on the core left, takes about the 2x a fair share explains (bench/bench_analysis.py).  So
    the cores minus those other processes kept busy over the last quarter second (rounded: a
    core counts when another job used it at least half the time) are used; None (no limit) on an
    otherwise idle machine or where it cannot be measured.  ``EXPLORER_THREADS`` (a count, or
    ``all``) overrides the measurement.
    """
    fixed, count = _fixed_threads()
    return count if fixed else _threads_for(others_busy())


class FairShare:
    """The thread count of one heavy analysis, measured at its start and revised while it runs.

    A snapshot is not enough: in the app the analysis starts while the browser draws the page
    (a core busy for a few seconds), and a count fixed then kept a 500-adapter analysis on one
    core for all its 78 s while the machine was 40 % idle.  :meth:`revisit`, called as each stage
    of the analysis is entered inside the block (:func:`explorer.core.timing.watching`: reads,
    Gram updates, eigen-solves, each null draw...), measures the other processes' use since the
    last look, at most every ``interval_s``, without sleeping, and applies the new count to torch
    and the BLAS/OpenMP pools between two steps, on the analysis' own thread.
    The first count comes from the time since the last heavy analysis ended when that was recent
    (:func:`_others_busy_since_last`), else from a fresh quarter-second window.
    ``EXPLORER_THREADS`` fixes the count instead.  The pools are restored on exit.  Inactive
    (``active=False``): nothing is changed.
    """

    def __init__(self, active: bool = True, interval_s: float = 1.0):
        self.active, self.interval_s = active, interval_s
        self.threads: int | None = None
        self.changes = 0
        self._fixed = False
        self._pools: _Pools | None = None
        self._stack = ExitStack()
        self._last: tuple[tuple[int, int, int] | None, float] = (None, 0.0)

    def __enter__(self) -> FairShare:
        if self.active:
            self._pools = _Pools()
            self._fixed, count = _fixed_threads()
            self._apply(count if self._fixed else _threads_for(_others_busy_since_last()))
            if not self._fixed:
                self._last = (_cpu_sample(), time.monotonic())
                self._stack.enter_context(watching(lambda _name: self.revisit()))
        return self

    def __exit__(self, *exc) -> None:
        global _last_look
        if self.active:
            self._stack.close()
            self._apply(None)
            if not self._fixed and (sample := _cpu_sample()) is not None:
                _last_look = (sample, time.monotonic())

    def _apply(self, n: int | None) -> None:
        self._pools.set(n)
        self.threads = n

    def revisit(self) -> None:
        """Re-measure the other processes' CPU use since the last look; apply a changed count."""
        if not self.active or self._fixed:
            return
        sample, at = self._last
        now = time.monotonic()
        if sample is None or now - at < self.interval_s:
            return
        current = _cpu_sample()
        if current is None:
            return
        self._last = (current, now)
        n = _threads_for(_busy_between(sample, current))
        if n != self.threads:
            self._apply(n)
            self.changes += 1


# Side (and model count) up to which BLAS/LAPACK calls are too small to gain from threads.
SMALL_SIDE = 512
_HEAVY = threading.RLock()


def is_small(shape: tuple[int, ...], n_models: int, device_type: str = "cpu") -> bool:
    """Whether a layer group is small enough to compute on one thread (see the module docstring)."""
    return device_type == "cpu" and max(shape) <= SMALL_SIDE and n_models <= SMALL_SIDE


@contextmanager
def heavy_slot(active: bool = True, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold this process's one slot for a heavy (multi-threaded) computation while ``active``.

    The app computes concurrent sessions in threads of one process.  Two analyses that each
    use every core on a 2-core machine were measured to take far more than twice as long as one
    (BLAS/OpenMP threads contend), so heavy analyses run one at a time, each with all the
    cores; small ones (:func:`is_small`, single-threaded) never wait.  ``on_wait`` is called once
    when the slot is busy (to say so in a progress bar).
    """
    if not active:
        yield
        return
    if not _HEAVY.acquire(blocking=False):
        if on_wait is not None:
            on_wait()
        _HEAVY.acquire()
    try:
        yield
    finally:
        _HEAVY.release()
