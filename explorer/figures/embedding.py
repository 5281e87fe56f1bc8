"""Embedding view: each model as a point in the shared basis, coloured by a metadata column."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer.figures.style import PALETTE, base_layout
from explorer.present.tables import category_order, is_categorical

#: One colour per category, up to :data:`explorer.present.tables.MAX_CATEGORIES`: the shared
#: Okabe-Ito palette, then four of Paul Tol's muted colours (distinct from it).
CATEGORY_COLORS: tuple[str, ...] = PALETTE + ("#882255", "#44AA99", "#999933", "#661100")


def embedding_figure(
    points: np.ndarray,
    table: pd.DataFrame,
    color_by: str | None = None,
    *,
    title: str = "Models in the shared basis",
    axis_titles: Sequence[str] = ("axis 1", "axis 2", "axis 3"),
    newcomers: tuple[np.ndarray, Sequence[str]] | None = None,
) -> go.Figure:
    """Scatter of models (2-D or 3-D), one trace per value of ``color_by`` (many numbers: a colour scale).

    Parameters
    ----------
    points : ndarray, shape (N, 2) or (N, 3)
    table : DataFrame, N rows
        Must have a ``name`` column; every column is shown on hover.
    color_by : str, optional
        Column of ``table`` to colour by.  It is coloured as categories when
        :func:`explorer.present.tables.is_categorical` says so (text, or at most
        ``MAX_CATEGORIES`` distinct numbers), else on a continuous scale.
    newcomers : (ndarray (M, dims), names), optional
        Models projected onto the family's basis (:mod:`explorer.apply.newcomer`): one trace
        ``"newcomers"`` of black crosses, not selectable as family members (no ``customdata``).

    Returns
    -------
    go.Figure
        Categorical colouring: one trace per category, named by it (numbers in increasing
        order), the legend titled ``color_by``; continuous or none: one trace ``"models"``.
        Each point's ``customdata`` is its row index in ``table`` (for selections).
    """
    points = np.asarray(points, dtype=float)
    dims = points.shape[1]
    idx = np.arange(len(table))
    cols = [c for c in table.columns if c != "name"][:8]  # hover shows name + up to 8 labels
    names = table["name"].astype(str).to_numpy()
    trace = go.Scatter3d if dims == 3 else go.Scattergl

    def add(sel: np.ndarray, name: str, marker: dict) -> None:
        rows = table.iloc[sel]
        # Hover text carries the name and the labels; plotly has no per-point dict lookup.
        text = [f"<b>{n}</b>" + "".join(f"<br>{c}: {rows.iloc[j][c]}" for c in cols) for j, n in enumerate(names[sel])]
        kw = dict(x=points[sel, 0], y=points[sel, 1], mode="markers", name=name, marker=marker,
                  text=text, customdata=idx[sel], hovertemplate="%{text}<extra></extra>")
        if dims == 3:
            kw["z"] = points[sel, 2]
        fig.add_trace(trace(**kw))

    fig = go.Figure()
    size = 4 if len(table) > 300 else 8
    if color_by and color_by in table.columns:
        col = table[color_by]
        if is_categorical(col):
            text = col.astype(str).to_numpy()
            for i, key in enumerate(category_order(col)):
                add(idx[text == key], key, dict(size=size, color=CATEGORY_COLORS[i % len(CATEGORY_COLORS)]))
            fig.update_layout(legend_title_text=color_by)
        else:
            add(idx, "models", dict(size=size, color=pd.to_numeric(col).to_numpy(dtype=float), colorscale="Viridis",
                                    colorbar=dict(title=color_by), showscale=True))
    else:
        add(idx, "models", dict(size=size, color=PALETTE[0]))
    if newcomers is not None and len(newcomers[1]):
        pts = np.asarray(newcomers[0], dtype=float)
        kw = dict(x=pts[:, 0], y=pts[:, 1], mode="markers", name="newcomers",
                  marker=dict(size=size + 6, color="#000000", symbol="x"),
                  text=[f"<b>{n}</b> (newcomer)" for n in newcomers[1]], hovertemplate="%{text}<extra></extra>")
        if dims == 3:
            kw["z"] = pts[:, 2]
        fig.add_trace(trace(**kw))
    axes = {"xaxis": dict(title=axis_titles[0]), "yaxis": dict(title=axis_titles[1])}
    if dims == 3:
        fig.update_layout(scene=dict(xaxis_title=axis_titles[0], yaxis_title=axis_titles[1], zaxis_title=axis_titles[2]),
                          height=650)
        axes = {}
    return base_layout(fig, title, dragmode="lasso" if dims == 2 else None, **axes)
