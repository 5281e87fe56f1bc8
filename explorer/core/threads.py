"""Thread policy: small groups on one thread; heavy analyses one at a time per process.

:func:`single_threaded` runs a block on one thread (torch's intra-op pool and the BLAS/OpenMP
pools), then restores them; :func:`heavy_slot` serialises the heavy analyses of one process, and
:func:`fair_threads` leaves the cores that other running jobs use to them.

Small matrices (sides of a few hundred) gain nothing from threads, and on a busy 2-core machine
the hand-offs were measured to cost up to 30x (27 s vs 0.9 s for a 128 x 64 group); one thread
also keeps float results independent of the core count.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from threadpoolctl import threadpool_limits

from explorer.core.errors import OptionError


@contextmanager
def thread_limit(n: int | None) -> Iterator[None]:
    """Limit torch and the BLAS/OpenMP pools to ``n`` threads (None: unchanged); restore them after."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        with threadpool_limits(limits=max(1, int(n))):
            yield
    finally:
        torch.set_num_threads(before)


def single_threaded(active: bool = True):
    """Limit torch and the BLAS/OpenMP pools to one thread while ``active``; restore them after."""
    return thread_limit(1 if active else None)


def _others_running() -> int | None:
    """Runnable tasks of *other* processes right now: ``/proc/loadavg``'s R minus this process's own.

    This process's threads are left out: BLAS/OpenMP workers spin, runnable, for a while after
    each parallel region, and are not competition.  None where ``/proc`` is not there.
    """
    try:
        with open("/proc/loadavg") as fh:
            total = int(fh.read().split()[3].split("/")[0])
        own = 0
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat") as fh:
                    own += fh.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:
                continue  # the thread ended meanwhile
    except (OSError, ValueError, IndexError):
        return None  # not Linux: no measurement, no limit
    return max(0, total - own)


def fair_threads(samples: int = 5) -> int | None:
    """Threads a heavy analysis should use: the cores that other running work leaves free.

    With another CPU-bound job on a 2-core machine, an analysis using both cores was measured at
    12x its quiet time (BLAS/OpenMP threads that wait on a descheduled sibling), where one thread,
    on the core left, takes about the 2x a fair share explains (bench/bench_analysis.py).  So
    the cores minus the other processes' tasks running now (the median of a few samples)
    are used; None (no limit) on an otherwise idle machine or where it cannot be measured.
    ``EXPLORER_THREADS`` (a count, or ``all``) overrides the measurement.
    """
    fixed = os.environ.get("EXPLORER_THREADS", "").strip()
    if fixed:  # a deliberate setting wins: a positive count, or "all" for no limit
        if fixed == "all":
            return None
        try:
            return max(1, int(fixed))
        except ValueError:
            raise OptionError(f"EXPLORER_THREADS must be a positive integer or 'all', got {fixed!r}") from None
    cores = os.cpu_count() or 1
    counts = []
    for _ in range(samples):
        r = _others_running()
        if r is None:
            return None
        counts.append(r)
        time.sleep(0.002)
    others = sorted(counts)[len(counts) // 2]
    return None if others == 0 else max(1, cores - others)


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
