"""Plotly figure builders: one function per view, results in, ``go.Figure`` out.

Builders never compute decompositions; they only lay out what the engine produced, so they are
tested without Streamlit by reading the figure's data back.
"""
from explorer.figures.apply import coefficients_figure, compression_figure, merge_figure, newcomer_figure
from explorer.figures.embedding import embedding_figure
from explorer.figures.generalization import accuracy_figure, coverage_figure, stability_figure
from explorer.figures.overlap import (
    angle_distribution_figure,
    overlap_heatmap_figure,
    universal_overlap_figure,
)
from explorer.figures.spectrum import (
    cumulative_overlay_figure,
    layer_heatmap_figure,
    scree_figure,
)
from explorer.figures.style import PALETTE, TEMPLATE

__all__ = [
    "PALETTE", "TEMPLATE", "accuracy_figure", "angle_distribution_figure", "coefficients_figure", "compression_figure", "coverage_figure",
    "cumulative_overlay_figure", "embedding_figure", "layer_heatmap_figure", "merge_figure", "newcomer_figure",
    "overlap_heatmap_figure",
    "scree_figure", "stability_figure", "universal_overlap_figure",
]
