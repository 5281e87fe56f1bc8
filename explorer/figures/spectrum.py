"""Spectrum views: scree with its baselines, cumulative overlays, layers x components heatmap."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.core.linalg import k_at
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
    ci: tuple[np.ndarray, np.ndarray] | None = None,
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
        Components drawn (at most d): the x axis shows exactly these, however far k(tau) lies.
        When k(tau) is beyond them (long-tailed spectra: k(0.9) in the thousands), stretching the
        axis to it would shrink the bars the user asked for to a sliver, so k(tau) is named in an
        annotation at the right edge (``"k(0.9) = 2087 →"``) instead of a vertical line.
    null : NullBand, optional
        The strength-matched Gaussian null: its EVR median drawn as a line with its band, named
        with the band's real coverage (``NullBand.band_name``) and its construction on hover.
    mp_edge_evr : float, optional
        Marchenko-Pastur upper edge of the null in EVR units: a horizontal line.
    ci : (lo, hi), each ndarray (K,), optional
        A confidence band of each component's EVR (the half-sampling band of
        :mod:`explorer.metrics.subsample`): error bars on the bars it covers.

    Returns
    -------
    go.Figure
        Traces named ``"EVR per component"`` (bars, x = 1..K, y = EVR_j), ``"cumulative EVR"``
        (right axis) and, when given, ``"null median"`` and the band (e.g. ``"null 90 % band"``).  The x range is
        ``[0.5, K + 0.5]``, K = min(max_components, d).
    """
    evr, cum = spectrum.evr, spectrum.cumulative
    k_tau = spectrum.k_at(tau)
    n = int(min(len(evr), max(1, max_components)))
    x = np.arange(1, n + 1)
    fig = go.Figure()
    err = None
    if ci is not None:
        lo, hi = (np.asarray(a)[:n] for a in ci)
        m = min(len(lo), n)
        err = dict(type="data", symmetric=False, array=np.clip(np.concatenate([hi[:m], evr[m:n]]) - evr[:n], 0, None),
                   arrayminus=np.clip(evr[:n] - np.concatenate([lo[:m], evr[m:n]]), 0, None), thickness=1, width=2,
                   color=NULL_COLOR)
    fig.add_trace(go.Bar(x=x, y=evr[:n], name="EVR per component", marker_color=PALETTE[0], error_y=err,
                         hovertemplate="component %{x}<br>EVR %{y:.4f}<extra></extra>"))
    if null is not None:
        med, lo, hi = (np.asarray(a)[:n] for a in null.evr)
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                 fill="toself", fillcolor=rgba(NULL_COLOR, 0.25), line=dict(width=0),
                                 name=null.band_name, hoveron="fills",
                                 hovertemplate=null.caption.replace("; ", "<br>") + "<extra></extra>"))
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
    if k_tau <= n:
        fig.add_vline(x=k_tau, line=dict(color="#555", dash="dash", width=1),
                      annotation_text=f"k({tau:g}) = {k_tau}", annotation_position="top left")
    else:
        fig.add_annotation(**_beyond_axis_note(f"k({tau:g}) {_k_text(cum, tau)} →", tau, yref="y2"))
    base_layout(
        fig,
        title or f"Scree — {spectrum.mode}-mode, centering {spectrum.center}, N = {spectrum.n_models}",
        # A fixed range: the bars and k(tau)'s marker, not autorange, decide what the axis shows.
        xaxis=dict(title="component j", range=[0.5, n + 0.5]),
        yaxis=dict(title="explained variance ratio", type="log" if log_y else "linear"),
        yaxis2=dict(title="cumulative", overlaying="y", side="right", range=[0, 1.02], showgrid=False,
                    tickmode="array", tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        bargap=0.1,
    )
    return fig


def _k_text(cumulative: np.ndarray, tau: float) -> str:
    """``"= 2087"``, or ``"> 256"`` for a truncated (randomized) curve that never reaches ``tau``.

    :func:`~explorer.core.linalg.k_at` returns such a curve's length, a lower bound only.
    """
    cum = np.asarray(cumulative, dtype=float)
    k = k_at(cum, tau)
    return f"= {k}" if len(cum) and cum[-1] >= tau - 1e-12 else f"> {len(cum)}"


def _beyond_axis_note(text: str, y: float, *, yref: str = "y", below: bool = False) -> dict:
    """An annotation at the right edge of the plot, just above height ``y``: a value off the x axis.

    Parameters
    ----------
    text : str
        E.g. ``"k(0.9) = 2087 →"``.
    y : float
        Height in ``yref`` units (the tau level, on the cumulative axis).
    yref : str
        The y axis ``y`` is measured on.
    below : bool
        Hang the text below ``y`` instead (where the tau line's own label sits above it).

    Returns
    -------
    dict
        Keyword arguments of ``go.Figure.add_annotation``.
    """
    return dict(text=text, x=1, xref="paper", xanchor="right", y=y, yref=yref,
                yanchor="top" if below else "bottom", showarrow=False, font=dict(color="#555"),
                bgcolor="rgba(255,255,255,0.8)")


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
        Whole curves: each is drawn up to ``max_components``, and its k(tau) is read from all of it.
    max_components : int
        Components drawn; the x axis keeps them, and the curves that reach tau only beyond
        them are named with their k(tau) in an annotation at the right edge.
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
    # A curve still below tau at the axis' end would leave its k(tau) unseen: name it.
    beyond = [(label, cum) for label, cum in curves if k_at(cum, tau) > max_components]
    if beyond:
        lines = "<br>".join(f"{label}: k({tau:g}) {_k_text(cum, tau)} →" for label, cum in beyond)
        fig.add_annotation(**_beyond_axis_note(lines, tau, below=True))
    return base_layout(fig, title, xaxis=dict(title="k (components)"),
                       yaxis=dict(title="cumulative EVR", range=[0, 1.02]))


def layer_heatmap_figure(
    layers: Sequence[str],
    cumulative: np.ndarray,
    tau: float = 0.9,
    *,
    title: str = "Cumulative EVR by layer",
    k_tau: Sequence[int] | None = None,
) -> go.Figure:
    """Layers x components heatmap of cumulative EVR, with k(tau) of each layer marked.

    Parameters
    ----------
    layers : sequence of str, length L
    cumulative : ndarray, shape (L, K)
        Row l is layer l's cumulative EVR for k = 1..K (pad shorter rows with 1.0).
    k_tau : sequence of int, length L, optional
        Each layer's k(tau) from its whole curve.  A row still below tau at K has its k(tau)
        beyond the matrix; without ``k_tau`` it is only known to exceed K.

    Returns
    -------
    go.Figure
        Trace 0: the heatmap (z = cumulative, shape (L, K)); trace 1: k(tau) markers of the
        layers whose k(tau) <= K; trace 2 (only when some layer's k(tau) > K): a marker at the
        right edge of each such row, its text naming k(tau) (``"2087 →"``, or ``"> 64 →"``).  The
        x axis keeps the K columns either way.
    """
    cumulative = np.asarray(cumulative, dtype=float)
    width = cumulative.shape[1]
    k = np.arange(1, width + 1)
    names = list(layers)
    # k_at caps at the row's length, so a row still below tau at K is told apart by its last value.
    reached = [bool(len(row)) and row[-1] >= tau - 1e-12 for row in cumulative]
    fig = go.Figure(go.Heatmap(z=cumulative, x=k, y=names, colorscale="Viridis", zmin=0, zmax=1,
                               colorbar=dict(title="cum. EVR"),
                               hovertemplate="%{y}<br>k = %{x}<br>cumulative %{z:.3f}<extra></extra>"))
    inside = [i for i, ok in enumerate(reached) if ok]
    fig.add_trace(go.Scatter(x=[k_at(cumulative[i], tau) for i in inside], y=[names[i] for i in inside],
                             mode="markers", name=f"k({tau:g})",
                             marker=dict(symbol="line-ns-open", size=14, color="white", line=dict(width=2))))
    outside = [i for i, ok in enumerate(reached) if not ok]
    if outside:
        text = [f"{int(k_tau[i])} →" if k_tau is not None else f"> {width} →" for i in outside]
        # An arrow head in the last column, pointing off the axis, with k(tau) written beside it.
        fig.add_trace(go.Scatter(x=[width] * len(outside), y=[names[i] for i in outside], mode="markers+text",
                                 text=text, textposition="middle left", textfont=dict(color="white"),
                                 marker=dict(symbol="triangle-right", size=11, color="white",
                                             line=dict(color="#222", width=1)),
                                 name=f"k({tau:g}) > {width}", hovertemplate=f"%{{y}}<br>k({tau:g}) = %{{text}}"
                                 "<extra></extra>"))
    # The K columns and nothing more: the markers in the last one must not widen the axis.
    return base_layout(fig, title, xaxis=dict(title="k (components)", range=[0.5, width + 0.5]),
                       yaxis=dict(title="layer", autorange="reversed"))
