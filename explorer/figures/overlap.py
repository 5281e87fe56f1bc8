"""Overlap views: subspace-overlap heatmaps, principal-angle distributions, overlap with the universal basis."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from explorer.figures.style import NULL_COLOR, PALETTE, base_layout, color

# Above this many rows a heatmap's hover labels become the bottleneck in the browser; beyond
# it we keep every cell but drop per-cell hover text.
_HOVER_LIMIT = 200


def overlap_heatmap_figure(
    matrix: np.ndarray,
    labels: Sequence[str],
    *,
    title: str,
    expectation: float | None = None,
    col_labels: Sequence[str] | None = None,
) -> go.Figure:
    """Heatmap of subspace overlaps in [0, 1] (model x model, layer x layer, group x group).

    Parameters
    ----------
    matrix : ndarray, shape (R, C)
        Overlaps sum(cos^2 theta) / min(k1, k2).
    labels : sequence of str, length R
    expectation : float, optional
        Overlap expected for random subspaces (k / d), shown in the colour bar title.
    col_labels : sequence of str, length C, optional (defaults to ``labels``)

    Returns
    -------
    go.Figure
        Trace 0: the heatmap, z = matrix.
    """
    matrix = np.asarray(matrix, dtype=float)
    cb = "overlap" + (f"<br>(random: {expectation:.3f})" if expectation is not None else "")
    hover = "%{y} vs %{x}<br>overlap %{z:.3f}<extra></extra>" if len(labels) <= _HOVER_LIMIT else None
    fig = go.Figure(go.Heatmap(z=matrix, x=list(col_labels if col_labels is not None else labels), y=list(labels),
                               zmin=0, zmax=1, colorscale="Blues", colorbar=dict(title=cb),
                               hovertemplate=hover, hoverinfo=None if hover else "skip"))
    return base_layout(fig, title, yaxis=dict(autorange="reversed", automargin=True), xaxis=dict(automargin=True))


def angle_distribution_figure(
    cosines: np.ndarray,
    *,
    title: str = "Principal angles: each model's own subspace vs the shared one",
    random_angles: np.ndarray | None = None,
) -> go.Figure:
    """Histogram of principal angles (degrees), per angle index, with an optional random reference.

    Parameters
    ----------
    cosines : ndarray, shape (N, k)
        Principal cosines of each model's subspace against the shared basis.
    random_angles : ndarray, optional
        Angles (degrees) between random subspaces of the same sizes: the null distribution.

    Returns
    -------
    go.Figure
        Trace ``"all angles"`` (histogram of every angle in degrees) and, if given, ``"random subspaces"``.
    """
    ang = np.degrees(np.arccos(np.clip(np.asarray(cosines, dtype=float), 0.0, 1.0)))
    fig = go.Figure()
    ang = ang[np.isfinite(ang)]  # NaN: angles a lower-rank or zero model does not have
    fig.add_trace(go.Histogram(x=ang.ravel(), name="all angles", marker_color=PALETTE[0], opacity=0.8,
                               xbins=dict(start=0, end=90, size=3), histnorm="probability"))
    if random_angles is not None:
        fig.add_trace(go.Histogram(x=np.asarray(random_angles).ravel(), name="random subspaces",
                                   marker_color=NULL_COLOR, opacity=0.5, xbins=dict(start=0, end=90, size=3),
                                   histnorm="probability"))
    fig.update_layout(barmode="overlay")
    return base_layout(fig, title, xaxis=dict(title="principal angle (degrees)", range=[0, 90]),
                       yaxis=dict(title="share of angles"))


def universal_overlap_figure(
    models: Sequence[str],
    overlaps: np.ndarray,
    groups: Sequence[str] | None = None,
    *,
    expectation: float | None = None,
    title: str = "Each model's overlap with the universal subspace",
) -> go.Figure:
    """Bar per model (sorted by overlap), coloured by group, with the random expectation line.

    Returns
    -------
    go.Figure
        One bar trace per group (or one named ``"models"``); y values are overlaps in [0, 1].
    """
    overlaps = np.asarray(overlaps, dtype=float)
    order = np.argsort(-overlaps)
    names = np.asarray(models)[order]
    vals = overlaps[order]
    fig = go.Figure()
    if groups is None:
        fig.add_trace(go.Bar(x=names, y=vals, name="models", marker_color=PALETTE[0]))
    else:
        g = np.asarray(groups)[order]
        for i, key in enumerate(dict.fromkeys(g)):
            sel = g == key
            fig.add_trace(go.Bar(x=names[sel], y=vals[sel], name=str(key), marker_color=color(i)))
    if expectation is not None:
        fig.add_hline(y=expectation, line=dict(color=NULL_COLOR, dash="dash"),
                      annotation_text=f"random subspace: {expectation:.3f}")
    return base_layout(fig, title, yaxis=dict(title="overlap", range=[0, 1.02]),
                       xaxis=dict(title="model", categoryorder="array", categoryarray=list(names),
                                  showticklabels=len(names) <= 60))
