"""Generalization views: held-out coverage against k, and accuracy of projected models against k."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go

from explorer.figures.style import NULL_COLOR, base_layout, color, rgba
from explorer.metrics.results import Stability


def coverage_figure(
    curves: Mapping[str, np.ndarray],
    *,
    bands: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    levels: Mapping[str, float] | None = None,
    max_k: int = 64,
    title: str = "Captured energy of held-out models",
) -> go.Figure:
    """Mean captured energy against k for several fits, with optional 5-95 % bands and flat levels.

    Parameters
    ----------
    curves : mapping label -> ndarray (K,)
        E.g. ``fitted``, ``held-out (5-fold)``, ``held-out (LOO)``, ``null median``, ``random subspace``.
        Labels containing "null" or "random" are drawn dashed grey.
    bands : mapping label -> (lo (K,), hi (K,)), optional
        Shaded bands for the curves of the same label.
    levels : mapping label -> float, optional
        Horizontal reference levels (e.g. ``mean-only``).

    Returns
    -------
    go.Figure
        One line trace per curve, named by its label; x = 1..K.
    """
    fig = go.Figure()
    for i, (label, y) in enumerate(curves.items()):
        y = np.asarray(y, dtype=float)[:max_k]
        x = np.arange(1, len(y) + 1)
        baseline = "null" in label or "random" in label
        c = NULL_COLOR if baseline else color(i)
        if bands and label in bands:
            lo, hi = (np.asarray(b, dtype=float)[: len(y)] for b in bands[label])
            fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                     fill="toself", fillcolor=rgba(c, 0.15), line=dict(width=0),
                                     name=f"{label} 5–95 %", hoverinfo="skip", showlegend=False))
        dash = "dot" if "random" in label else "dash" if baseline else "solid"
        fig.add_trace(go.Scatter(x=x, y=y, name=label, mode="lines",
                                 line=dict(color=c, width=2, dash=dash),
                                 hovertemplate=f"{label}<br>k = %{{x}}<br>captured %{{y:.4f}}<extra></extra>"))
    for j, (label, v) in enumerate((levels or {}).items()):
        fig.add_hline(y=v, line=dict(color=color(j + 5), dash="dot"), annotation_text=f"{label}: {v:.3f}",
                      annotation_position="bottom left")
    return base_layout(fig, title, xaxis=dict(title="k (components)"),
                       yaxis=dict(title="captured energy ‖U_kᵀW‖²/‖W‖²", range=[0, 1.02]))


def accuracy_figure(
    ks: np.ndarray,
    accuracy: Mapping[str, np.ndarray],
    *,
    original: Mapping[str, float] | None = None,
    chance: float | None = None,
    heldout: Mapping[str, np.ndarray] | None = None,
    levels: Mapping[str, float] | None = None,
    title: str = "Accuracy of models projected onto k shared components",
) -> go.Figure:
    """Test accuracy against k, one line per task group, with the unprojected accuracy as reference.

    Parameters
    ----------
    ks : ndarray, shape (K,)
    accuracy : mapping group -> ndarray (K,)
        Mean accuracy of the group's models after projecting the layer onto k components.
    original : mapping group -> float, optional
        The group's accuracy without projection (dotted line of the same colour).
    chance : float, optional
    heldout : mapping group -> ndarray (K,), optional
        The same with each model projected onto a basis fitted without its fold: a dashed line
        of the group's colour, named ``"<group> (held-out basis)"``.
    levels : mapping label -> float, optional
        Horizontal reference levels (e.g. ``mean-only``: every model given the family's mean layer).

    Returns
    -------
    go.Figure
        One line trace per group, named by it, and one per held-out group when given.
    """
    fig = go.Figure()
    for i, (g, acc) in enumerate(accuracy.items()):
        fig.add_trace(go.Scatter(x=np.asarray(ks), y=np.asarray(acc, dtype=float), name=str(g),
                                 mode="lines+markers", line=dict(color=color(i), width=2),
                                 hovertemplate=f"{g}<br>k = %{{x}}<br>accuracy %{{y:.3f}}<extra></extra>"))
        if heldout and g in heldout:
            fig.add_trace(go.Scatter(x=np.asarray(ks), y=np.asarray(heldout[g], dtype=float), name=f"{g} (held-out basis)",
                                     mode="lines+markers", line=dict(color=color(i), width=2, dash="dash"),
                                     marker=dict(symbol="circle-open"),
                                     hovertemplate=f"{g}, basis fitted without its fold<br>k = %{{x}}<br>"
                                                   "accuracy %{y:.3f}<extra></extra>"))
        if original and g in original:
            fig.add_hline(y=original[g], line=dict(color=color(i), dash="dot", width=1))
    if chance is not None:
        fig.add_hline(y=chance, line=dict(color=NULL_COLOR, dash="dash"), annotation_text=f"chance {chance:.2f}")
    for j, (label, v) in enumerate((levels or {}).items()):
        fig.add_hline(y=v, line=dict(color=color(j + 5), dash="dot"), annotation_text=f"{label}: {v:.3f}",
                      annotation_position="bottom left")
    ks = np.asarray(ks)
    return base_layout(fig, title, xaxis=dict(title="k (components kept)", type="log", tickmode="array",
                                              tickvals=ks, ticktext=[str(int(k)) for k in ks]),
                       yaxis=dict(title="test accuracy", range=[0, 1.02]))


def stability_figure(stability: Stability, *, title: str = "How many models until the subspace stabilises") -> go.Figure:
    """k(0.9) and the overlap with the whole family's basis against the number of models N'.

    Parameters
    ----------
    stability : Stability
        From :mod:`explorer.metrics.subsample` (``Metrics.stability``).

    Returns
    -------
    go.Figure
        Traces ``"k(0.9)"`` (median over subsamples, left axis, with its 5-95 % band
        ``"k(0.9) 5–95 %"``) and ``"overlap with all N"`` (median, right axis, band
        ``"overlap 5–95 %"``); x = ``stability.sizes``.
    """
    x = np.asarray(stability.sizes, dtype=float)
    fig = go.Figure()
    for name, vals, axis, i in (("k(0.9)", stability.k_tau, "y", 0), ("overlap with all N", stability.overlap, "y2", 1)):
        with np.errstate(all="ignore"):
            med, lo, hi = (np.nanquantile(vals, q, axis=1) for q in (0.5, 0.05, 0.95))
        band = "k(0.9) 5–95 %" if i == 0 else "overlap 5–95 %"
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                                 fillcolor=rgba(color(i), 0.18), line=dict(width=0), name=band, yaxis=axis,
                                 hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=med, name=name, mode="lines+markers", yaxis=axis, line=dict(color=color(i)),
                                 hovertemplate=f"N' = %{{x}}<br>{name} %{{y:.3g}}<extra></extra>"))
    return base_layout(fig, title, xaxis=dict(title="models in the subsample (N')", type="log"),
                       yaxis=dict(title="k(0.9)", rangemode="tozero"),
                       yaxis2=dict(title=f"overlap of the top-{stability.k} basis with all N", overlaying="y",
                                   side="right", range=[0, 1.02]))
