"""Independent tasks on the cluster (one per layer group), results as they complete, with progress."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from explorer.core.progress import ProgressFn


def run_tasks(client, fn: Callable[..., Any], jobs: Sequence[tuple], progress: ProgressFn | None = None,
              label: str = "cluster tasks") -> Iterator[tuple[int, Any]]:
    """Run ``fn(*job)`` for every job on the cluster; yield ``(job index, result)`` as each finishes.

    A task whose worker dies is rescheduled by Dask (``distributed.scheduler.allowed-failures``
    times); an exception raised by ``fn`` is raised here, and the jobs still queued are cancelled.
    """
    from distributed import as_completed  # only on the cluster path

    futures = [client.submit(fn, *job, pure=False) for job in jobs]
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for done, future in enumerate(as_completed(futures, loop=client.loop), 1):
            result = future.result()
            if progress is not None:
                progress(done, len(futures), label)
            yield index[future.key], result
    finally:
        client.cancel([f for f in futures if not f.done()])
