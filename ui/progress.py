"""Progress of long computations: an ``st.status`` box with an ``st.progress`` bar and an ETA.

The library reports progress as ``progress(done, total, label)`` and calls it only when it
really reads or computes something, so the box is opened on the first call: a cache hit
draws nothing, and no cache lookup is needed to decide whether to show it.
"""
from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import streamlit as st

# An ETA from the first few steps of a phase is noise (warm-up, first file opened).
_MIN_ETA_FRACTION = 0.05


def format_seconds(seconds: float) -> str:
    """``"12 s"`` under two minutes, else ``"3 min"`` (what a reader needs to decide to wait)."""
    return f"{max(1, round(seconds))} s" if seconds < 120 else f"{round(seconds / 60)} min"


class StatusProgress:
    """A progress callback that draws a status box, a bar and the time left in the current phase.

    Use it as a context manager around the call that reports progress::

        with StatusProgress("Decomposing layers.1…", "layers.1 decomposed") as progress:
            res = analyze_cached(fam, layer, progress=progress)

    Parameters
    ----------
    label : str
        Heading of the box while it runs.
    done_label : str
        Heading once the call returned (the box then collapses).

    Notes
    -----
    Each new ``label`` passed to the callback is a new phase (reading, null draws, metrics
    passes...) with its own ``total``; the ETA extrapolates the current phase's rate only,
    since phases run at very different speeds.
    """

    def __init__(self, label: str, done_label: str):
        self.label, self.done_label = label, done_label
        self._status: Any = None
        self._bar: Any = None
        self._phase: str | None = None
        self._phase_start = 0.0
        self._phase_done0 = 0

    def __call__(self, done: int, total: int, label: str) -> None:
        now = time.monotonic()
        if self._status is None:
            self._status = st.status(self.label, expanded=True)
            self._bar = self._status.progress(0.0)
        if label != self._phase:
            # The first call of a phase only starts its clock: the rate is measured from here.
            self._phase, self._phase_start, self._phase_done0 = label, now, done
        frac = min(done / max(total, 1), 1.0)
        text = f"{label}: {done}/{total}"
        steps = done - self._phase_done0
        if steps > 0 and _MIN_ETA_FRACTION <= frac < 1.0:
            left = (now - self._phase_start) / steps * (total - done)
            text += f" · about {format_seconds(left)} left"
        self._bar.progress(frac, text=text)

    def __enter__(self) -> StatusProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._status is None:
            return
        if exc_type is None:
            self._status.update(label=self.done_label, state="complete", expanded=False)
        else:
            self._status.update(label=f"{self.label} failed", state="error", expanded=False)
