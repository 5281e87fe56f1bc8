"""Run a block on one thread (torch's intra-op pool and the BLAS/OpenMP pools), then restore them.

Small matrices (sides of a few hundred) gain nothing from threads, and on a busy 2-core machine
the hand-offs were measured to cost up to 30x (27 s vs 0.9 s for a 128 x 64 group); one thread
also keeps float results independent of the core count.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def single_threaded(active: bool = True) -> Iterator[None]:
    """Limit torch and the BLAS/OpenMP pools to one thread while ``active``; restore them after."""
    if not active:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
