"""Spectrum views: scree with its baselines, cumulative overlays, layers x components heatmap."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.engine.options import Spectrum
from explorer.figures.style import NULL_COLOR, PALETTE, base_layout, color, rgba
from explorer.metrics.results import NullBand


def scree_figure(
    spectrum: Spectrum,
    tau: float = 0.9,
    *,
    log_y: bool = False,
    max_components: int = 64,
    title: str | None = None,
    null: NullBand | None = None,
    mp_edge_evr: float | None = None,
) -> go.Figure:
    """Scree plot: explained variance per component (bars) and cumulative (line), with baselines.

    Parameters
    ----------
    spectrum : Spectrum
        Eigenvalues of shape (d,).
    tau : float
        Threshold whose k(tau) is marked with a vertical line; the tau level is a horizontal line.
    log_y : bool
        Log scale for the per-component axis (the cumulative axis stays linear).
    max_components : int
        Components drawn (at most d).  The range always reaches k(tau).
    null : NullBand, optional
        The strength-matched Gaussian null: its EVR median drawn as a line with its 5-95 % band.
    mp_edge_evr : float, optional
        Marchenko-Pastur upper edge of the null in EVR units: a horizontal line.

    Returns
    -------
    go.Figure
        Traces named ``"EVR per component"`` (bars, x = 1..K, y = EVR_j), ``"cumulative EVR"``
        (right axis) and, when given, ``"null median"``, ``"null 5–95 %"``.
    """
    evr, cum = spectrum.evr, spectrum.cumulative
    k_tau = spectrum.k_at(tau)
    n = int(min(len(evr), max(max_components, k_tau + 2)))
    x = np.arange(1, n + 1)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=evr[:n], name="EVR per component", marker_color=PALETTE[0],
                         hovertemplate="component %{x}<br>EVR %{y:.4f}<extra></extra>"))
    if null is not None:
        med, lo, hi = (np.asarray(a)[:n] for a in null.evr)
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                 fill="toself", fillcolor=rgba(NULL_COLOR, 0.25), line=dict(width=0),
                                 name="null 5–95 %", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=med, name="null median", mode="lines",
                                 line=dict(color=NULL_COLOR, dash="dash"),
                                 hovertemplate="component %{x}<br>null EVR %{y:.4f}<extra></extra>"))
    if mp_edge_evr is not None and np.isfinite(mp_edge_evr):
        fig.add_hline(y=mp_edge_evr, line=dict(color=NULL_COLOR, dash="dot", width=1),
                      annotation_text="Marchenko–Pastur edge", annotation_position="top right")
    fig.add_trace(go.Scatter(x=x, y=cum[:n], name="cumulative EVR", mode="lines+markers", yaxis="y2",
                             line=dict(color=PALETTE[3], width=2), marker=dict(size=4),
                             hovertemplate="k = %{x}<br>cumulative %{y:.4f}<extra></extra>"))
    fig.add_hline(y=tau, yref="y2", line=dict(color=PALETTE[3], dash="dot", width=1),
                  annotation_text=f"τ = {tau:g}", annotation_position="bottom right")
    fig.add_vline(x=k_tau, line=dict(color="#555", dash="dash", width=1),
                  annotation_text=f"k({tau:g}) = {k_tau}", annotation_position="top left")
    base_layout(
        fig,
        title or f"Scree — {spectrum.mode}-mode, centering {spectrum.center}, N = {spectrum.n_models}",
        xaxis=dict(title="component j"),
        yaxis=dict(title="explained variance ratio", type="log" if log_y else "linear"),
        yaxis2=dict(title="cumulative", overlaying="y", side="right", range=[0, 1.02], showgrid=False,
                    tickmode="array", tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        bargap=0.1,
    )
    return fig


def cumulative_overlay_figure(
    curves: Sequence[tuple[str, np.ndarray]],
    tau: float = 0.9,
    *,
    max_components: int = 64,
    null: tuple[str, np.ndarray] | None = None,
    title: str = "Cumulative explained variance",
) -> go.Figure:
    """Several cumulative-EVR curves (layers or families) on one chart.

    Parameters
    ----------
    curves : sequence of (label, cumulative ndarray (d_i,))
    null : (label, cumulative ndarray), optional
        A baseline drawn dashed grey (e.g. the null median of the first curve).

    Returns
    -------
    go.Figure
        One line trace per curve, named by its label, x = 1..K.
    """
    fig = go.Figure()
    for i, (label, cum) in enumerate(curves):
        n = min(len(cum), max_components)
        fig.add_trace(go.Scatter(x=np.arange(1, n + 1), y=np.asarray(cum)[:n], name=label, mode="lines",
                                 line=dict(color=color(i), width=2),
                                 hovertemplate=f"{label}<br>k = %{{x}}<br>cumulative %{{y:.4f}}<extra></extra>"))
    if null is not None:
        label, cum = null
        n = min(len(cum), max_components)
        fig.add_trace(go.Scatter(x=np.arange(1, n + 1), y=np.asarray(cum)[:n], name=label, mode="lines",
                                 line=dict(color=NULL_COLOR, dash="dash")))
    fig.add_hline(y=tau, line=dict(color="#555", dash="dot", width=1), annotation_text=f"τ = {tau:g}")
    return base_layout(fig, title, xaxis=dict(title="k (components)"),
                       yaxis=dict(title="cumulative EVR", range=[0, 1.02]))


def layer_heatmap_figure(
    layers: Sequence[str],
    cumulative: np.ndarray,
    tau: float = 0.9,
    *,
    title: str = "Cumulative EVR by layer",
) -> go.Figure:
    """Layers x components heatmap of cumulative EVR, with k(tau) of each layer marked.

    Parameters
    ----------
    layers : sequence of str, length L
    cumulative : ndarray, shape (L, K)
        Row l is layer l's cumulative EVR for k = 1..K (pad shorter rows with 1.0).

    Returns
    -------
    go.Figure
        Trace 0: the heatmap (z = cumulative, shape (L, K)); trace 1: k(tau) markers.
    """
    cumulative = np.asarray(cumulative, dtype=float)
    k = np.arange(1, cumulative.shape[1] + 1)
    k_tau = [int(min(np.searchsorted(row, tau - 1e-12) + 1, len(row))) for row in cumulative]
    fig = go.Figure(go.Heatmap(z=cumulative, x=k, y=list(layers), colorscale="Viridis", zmin=0, zmax=1,
                               colorbar=dict(title="cum. EVR"),
                               hovertemplate="%{y}<br>k = %{x}<br>cumulative %{z:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=k_tau, y=list(layers), mode="markers", name=f"k({tau:g})",
                             marker=dict(symbol="line-ns-open", size=14, color="white", line=dict(width=2))))
    return base_layout(fig, title, xaxis=dict(title="k (components)"), yaxis=dict(title="layer", autorange="reversed"))
