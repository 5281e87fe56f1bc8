"""Analyses of the selection, through the library's content-addressed disk cache.

There is no second cache here: :func:`explorer.pipeline.analyze.analyze_cached` keys each
analysis by content, reads a hit back from disk (shared with the CLI, other sessions and other
processes) and computes only on a miss, with one process computing while the others wait.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

import explorer
from explorer.core.errors import ExplorerError
from explorer.metrics.results import MetricsOptions
from explorer.engine.options import Spectrum
from explorer.pipeline.analyze import analyze_cached
from ui.families import load_family
from ui.progress import StatusProgress
from ui.state import Selection


Preview = Callable[[Spectrum], None]
"""Draws a first chart from the spectrum while the metrics are computed (on a miss only)."""


def compute(sel: Selection, layer: str | None = None, metrics: MetricsOptions | None = None,
            source: str | None = None, preview: Preview | None = None) -> explorer.Analysis:
    """The analysis of ``sel``, or of another ``layer``, ``metrics`` or ``source`` with its options.

    A miss shows a status box with a progress bar and the time left; a hit draws nothing.
    ``preview`` draws, below the box, a first chart from the spectrum as soon as it is decomposed
    (at 500 adapters the null band and held-out curves take most of the time); it is cleared when
    the analysis returns, so the page then draws as on a hit.
    ``sel.strict`` refuses a family with a bad member, NaN/Inf data found while reading included.

    Raises
    ------
    ExplorerError
        For bad input (the message names the file or option); with ``sel.strict``, for the
        first bad member.
    """
    layer = layer or sel.layer
    fam = load_family(source or sel.source, sel.strict)
    with StatusProgress(f"Decomposing {layer} ({sel.mode}-mode)…", f"{layer} decomposed") as progress:
        holder = st.empty() if preview is not None else None

        def early(spectrum: Spectrum) -> None:
            with holder.container():
                preview(spectrum)

        try:
            return analyze_cached(fam, layer, sel.view or None, sel.options, metrics or sel.metrics, progress=progress,
                                  strict=sel.strict, scheduler=sel.scheduler or None,
                                  on_spectrum=early if holder is not None else None)
        finally:
            if holder is not None:
                holder.empty()


def analysis(sel: Selection, preview: Preview | None = None) -> explorer.Analysis | None:
    """:func:`compute` with errors shown as ``st.error`` (the page then stops drawing)."""
    try:
        return compute(sel, preview=preview)
    except ExplorerError as exc:
        st.error(str(exc))
        return None
