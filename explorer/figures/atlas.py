"""The atlas heatmap: layers x module types, one verdict per cell."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from explorer.figures.style import base_layout
from explorer.present.atlas import AtlasGrid

# Short cell text per verdict label.
_MARKS = {"shared": "shared", "shared, mostly the mean": "mean", "fitted, not held out": "fitted",
          "null-like": "null", "undetermined": "?"}


def atlas_heatmap_figure(grid: AtlasGrid, *, title: str, value_name: str) -> go.Figure:
    """Heatmap of one verdict field over layers x modules, each cell marked with its verdict.

    Parameters
    ----------
    grid : AtlasGrid
    value_name : str
        What the colour shows (colour-bar title and hover).

    Returns
    -------
    go.Figure
        Trace 0: the heatmap, z = grid.values (rows = grid.layers, columns = grid.modules);
        ``customdata`` holds each cell's layer-group name, so a click can open it.
    """
    text = np.vectorize(lambda lab: _MARKS.get(lab, lab))(grid.labels) if grid.labels.size else grid.labels
    z = np.where(np.isfinite(grid.values), grid.values, np.nan)
    fig = go.Figure(go.Heatmap(
        z=z, x=grid.modules, y=grid.layers, text=text, texttemplate="%{text}", customdata=grid.groups,
        colorscale="Viridis", colorbar=dict(title=value_name),
        hovertemplate="%{customdata}<br>" + value_name + " %{z:.3g}<br>verdict: %{text}<extra></extra>",
    ))
    return base_layout(fig, title, xaxis=dict(title="module", automargin=True),
                       yaxis=dict(title="layer", autorange="reversed", type="category"))
