"""Futures on the cluster followed as they complete, with progress: independent tasks (one per
layer group) and the shards of one analysis's passes."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from explorer.core.progress import ProgressFn


def follow(client, futures: Sequence, progress: ProgressFn | None = None, label: str = "cluster tasks",
           weights: Sequence[int] | None = None, also: Sequence = ()) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, future)`` as each of ``futures`` finishes, with progress in finished weight.

    ``weights`` count each future's share of the work (models in a shard; default 1 each).  The
    first failed future raises its worker's exception here (a MemberError names its member); then,
    or when the caller stops early, the futures still pending and ``also`` are cancelled.
    """
    from distributed import as_completed  # only on the cluster path

    w = [1] * len(futures) if weights is None else list(weights)
    index = {f.key: i for i, f in enumerate(futures)}
    total, done, finished = sum(w), 0, False
    try:
        for future in as_completed(list(futures), loop=client.loop):
            if future.status == "error":
                future.result()
            i = index[future.key]
            done += w[i]
            if progress is not None:
                progress(done, total, label)
            yield i, future
        finished = True
    finally:
        if not finished:
            client.cancel([f for f in futures if not f.done()] + list(also))


def run_tasks(client, fn: Callable[..., Any], jobs: Sequence[tuple], progress: ProgressFn | None = None,
              label: str = "cluster tasks") -> Iterator[tuple[int, Any]]:
    """Run ``fn(*job)`` for every job on the cluster; yield ``(job index, result)`` as each finishes.

    A task whose worker dies is rescheduled by Dask (``distributed.scheduler.allowed-failures``
    times); an exception raised by ``fn`` is raised here, and the jobs still queued are cancelled.
    """
    futures = [client.submit(fn, *job, pure=False) for job in jobs]
    for i, future in follow(client, futures, progress, label):
        yield i, future.result()
