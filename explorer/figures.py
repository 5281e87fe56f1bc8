"""Plotly figure builders: one function per view, results in, ``go.Figure`` out.

Builders never compute decompositions; they only lay out what the engine produced, so they are
tested without Streamlit by reading the figure's data back.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .spectral import Spectrum

# One palette for every view, colour-blind safe (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
TEMPLATE = "plotly_white"


def scree_figure(
    spectrum: Spectrum,
    tau: float = 0.9,
    *,
    log_y: bool = False,
    max_components: int = 64,
    title: str | None = None,
) -> go.Figure:
    """Scree plot: explained variance per component (bars) and cumulative (line).

    Parameters
    ----------
    spectrum : Spectrum
        Eigenvalues of shape (d,).
    tau : float
        Threshold whose k(tau) is marked with a vertical line; the tau level is a horizontal line.
    log_y : bool
        Log scale for the per-component axis (the cumulative axis stays linear).
    max_components : int
        Components drawn (at most d).  The cumulative curve always reaches k(tau).

    Returns
    -------
    go.Figure
        Trace 0: bars ``"EVR per component"`` (x = 1..K, y = EVR_j).
        Trace 1: line ``"cumulative EVR"`` on the right axis.
    """
    evr, cum = spectrum.evr, spectrum.cumulative
    k_tau = spectrum.k_at(tau)
    n = int(min(len(evr), max(max_components, k_tau + 2)))
    x = np.arange(1, n + 1)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=evr[:n], name="EVR per component", marker_color=PALETTE[0],
                         hovertemplate="component %{x}<br>EVR %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=cum[:n], name="cumulative EVR", mode="lines+markers", yaxis="y2",
                             line=dict(color=PALETTE[3], width=2), marker=dict(size=4),
                             hovertemplate="k = %{x}<br>cumulative %{y:.4f}<extra></extra>"))
    fig.add_hline(y=tau, yref="y2", line=dict(color=PALETTE[3], dash="dot", width=1),
                  annotation_text=f"τ = {tau:g}", annotation_position="bottom right")
    fig.add_vline(x=k_tau, line=dict(color="#555", dash="dash", width=1),
                  annotation_text=f"k({tau:g}) = {k_tau}", annotation_position="top left")
    fig.update_layout(
        template=TEMPLATE,
        title=title or f"Scree — {spectrum.mode}-mode, centering {spectrum.center}, N = {spectrum.n_models}",
        xaxis=dict(title="component j"),
        yaxis=dict(title="explained variance ratio", type="log" if log_y else "linear"),
        yaxis2=dict(title="cumulative", overlaying="y", side="right", range=[0, 1.02], showgrid=False,
                    tickmode="array", tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        legend=dict(orientation="h", y=-0.2),
        margin=dict(t=60, r=60, l=60, b=40),
        bargap=0.1,
    )
    return fig
