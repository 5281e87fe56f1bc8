"""Shared look of every figure: palette, template, common layout."""
from __future__ import annotations

import plotly.graph_objects as go

# Okabe-Ito: colour-blind safe, and distinct in print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
NULL_COLOR = "#7F7F7F"
TEMPLATE = "plotly_white"


def base_layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    """Apply the common template, title, legend position and margins."""
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        legend=dict(orientation="h", y=-0.18),
        margin=dict(t=60, r=60, l=60, b=40),
        **kw,
    )
    return fig


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"
