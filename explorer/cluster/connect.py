"""The client of a Dask scheduler: the address (``--scheduler`` or ``EXPLORER_SCHEDULER``), one
client per address and process, and one clear message when nobody answers there."""
from __future__ import annotations

import os
import threading
from typing import Any

from explorer.core.errors import OptionError

#: Environment variable naming the scheduler when ``--scheduler`` is not given.
SCHEDULER_ENV = "EXPLORER_SCHEDULER"
#: Seconds to wait for the scheduler to answer, then for a first worker to join it.
CONNECT_TIMEOUT_S = 10.0

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def scheduler_address(value: str | None = None) -> str | None:
    """The scheduler to use: ``value`` if given (an empty string means none), else ``$EXPLORER_SCHEDULER``."""
    address = value if value is not None else os.environ.get(SCHEDULER_ENV, "")
    address = address.strip()
    return address or None


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S):
    """A :class:`distributed.Client` of the scheduler at ``address`` (reused while it is connected).

    Raises
    ------
    OptionError
        If no scheduler answers at ``address`` within ``timeout`` seconds, or it has no worker
        after as long again (the analysis would otherwise wait forever).
    """
    with _lock:
        client = _clients.get(address)
        if client is not None and client.status == "running":
            return client
        # Imported here: the local path (no scheduler) never loads Dask.
        from distributed import Client

        try:
            client = Client(address, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise OptionError(f"scheduler {address!r}: no Dask scheduler answered within {timeout:g} s ({exc}); "
                              f"start one with `dask scheduler` and workers with `dask worker {address}`, "
                              f"or leave --scheduler and ${SCHEDULER_ENV} unset to run on this machine") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            client.close()
            raise OptionError(f"scheduler {address!r} has no worker (waited {timeout:g} s); "
                              f"start some with `dask worker {address}`") from None
        _clients[address] = client
        return client


def n_workers(client) -> int:
    """Workers the scheduler has now (at least 1)."""
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def close_all() -> None:
    """Close every client this process opened (tests; the CLI exits anyway)."""
    with _lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
