"""Apply views: compression error against k, newcomers against the family's held-out energies,
and every merge on every task."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from explorer.figures.style import NULL_COLOR, base_layout, color, rgba


def compression_figure(errors: Mapping[str, np.ndarray], *, mean_only: Mapping[str, float] | None = None,
                       title: str = "Reconstruction error against k") -> go.Figure:
    """Mean relative error ‖W − Ŵ‖/‖W‖ of the models against k, per compressed view, with its
    5–95 % band across models and the mean-only reconstruction's error as a dotted level.

    Parameters
    ----------
    errors : mapping label -> ndarray (N, K)
        Each model's error at k = 1..K (:meth:`CompressedView.error_curve`); NaN rows are ignored.
    mean_only : mapping label -> float, optional
        The mean-only reconstruction's mean error of the same view.

    Returns
    -------
    go.Figure
        One line trace per label (named by it), one hidden-legend band trace each, x = 1..K.
    """
    fig = go.Figure()
    for i, (label, e) in enumerate(errors.items()):
        e = np.asarray(e, dtype=float)
        x = np.arange(1, e.shape[1] + 1)
        with np.errstate(all="ignore"):
            mean, lo, hi = np.nanmean(e, 0), np.nanquantile(e, 0.05, 0), np.nanquantile(e, 0.95, 0)
        c = color(i)
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                                 fillcolor=rgba(c, 0.15), line=dict(width=0), name=f"{label} 5–95 %",
                                 hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=mean, name=label, mode="lines", line=dict(color=c, width=2),
                                 hovertemplate=f"{label}<br>k = %{{x}}<br>mean error %{{y:.4f}}<extra></extra>"))
        if mean_only and mean_only.get(label) is not None and np.isfinite(mean_only[label]):
            fig.add_hline(y=mean_only[label], line=dict(color=c, dash="dot"),
                          annotation_text=f"{label}: mean only {mean_only[label]:.3f}", annotation_position="top right")
    return base_layout(fig, title, xaxis=dict(title="k (directions kept)"),
                       yaxis=dict(title="relative error ‖W − Ŵ‖/‖W‖", rangemode="tozero"))


def newcomer_figure(reference: np.ndarray, newcomers: Sequence[tuple[str, float, bool]], *, k: int,
                    reference_name: str = "held-out", title: str = "Newcomers against the family") -> go.Figure:
    """Histogram of the family's held-out captured energies at k, each newcomer a vertical line.

    Parameters
    ----------
    reference : ndarray (N,)
        The family's held-out captured energies at k (NaN ignored).
    newcomers : list of (name, captured energy, is_outlier)

    Returns
    -------
    go.Figure
        A histogram trace ``"family (<reference_name>)"`` and one line trace per newcomer, named
        by it (red when flagged an outlier).
    """
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref)]
    fig = go.Figure(go.Histogram(x=ref, name=f"family ({reference_name})", marker=dict(color=NULL_COLOR),
                                 opacity=0.6, nbinsx=min(40, max(5, len(ref) // 2))))
    top = max(1, len(ref) // 3)
    for i, (name, cap, outlier) in enumerate(newcomers):
        c = "#D55E00" if outlier else color(i)
        fig.add_trace(go.Scatter(x=[cap, cap], y=[0, top], mode="lines", name=name + (" (outlier)" if outlier else ""),
                                 line=dict(color=c, width=2, dash="dash" if outlier else "solid"),
                                 hovertemplate=f"{name}<br>captured %{{x:.4f}}<extra></extra>"))
    return base_layout(fig, title, xaxis=dict(title=f"captured energy at k = {k}", range=[0, 1.02]),
                       yaxis=dict(title="family members"), barmode="overlay")


def merge_figure(table: pd.DataFrame, *, title: str = "Every merge on every task") -> go.Figure:
    """Grouped bars: for each task (and their mean), the accuracy of every merge and of the
    experts (the chosen models trained on that task).

    Parameters
    ----------
    table : DataFrame
        :func:`explorer.apply.merge_eval.merge_accuracy`'s long table.

    Returns
    -------
    go.Figure
        One bar trace per merge method (named by it) and one ``"expert (own task)"``.
    """
    tasks = list(dict.fromkeys(table["task"]))
    x = tasks + ["mean over tasks"]
    fig = go.Figure()
    merges = table[table["kind"] == "merge"]
    for i, method in enumerate(dict.fromkeys(merges["model"])):
        sub = merges[merges["model"] == method].set_index("task")["accuracy"]
        y = [float(sub[t]) for t in tasks]
        fig.add_trace(go.Bar(x=x, y=y + [float(np.mean(y))], name=method, marker=dict(color=color(i)),
                             hovertemplate=f"{method}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    expert = table.drop_duplicates("task").set_index("task")["expert"]
    ye = [float(expert[t]) for t in tasks]
    fig.add_trace(go.Bar(x=x, y=ye + [float(np.mean(ye))], name="expert (own task)",
                         marker=dict(color=NULL_COLOR), hovertemplate="expert<br>%{x}: %{y:.3f}<extra></extra>"))
    return base_layout(fig, title, barmode="group", xaxis=dict(title="task"),
                       yaxis=dict(title="test accuracy", range=[0, 1.02]))


def coefficients_figure(table: pd.DataFrame, *, title: str = "Trainable parameters against accuracy") -> go.Figure:
    """Accuracy against trainable parameters: the coefficient adapters along k (a line, min–max
    error bars over seeds), the full LoRA as one marker, the untrained baselines as levels.

    Parameters
    ----------
    table : DataFrame
        :func:`explorer.apply.coefficients.coefficient_training`'s rows.

    Returns
    -------
    go.Figure
        Traces ``"coefficients (basis frozen)"`` and ``"full LoRA"``; dotted levels for the rows
        that train nothing (the base, the mean update) and a dashed one for the zoo's adapters.
    """
    fig = go.Figure()
    coef = table[table["method"] == "coefficients"].sort_values("trainable")
    fig.add_trace(go.Scatter(
        x=coef["trainable"], y=coef["accuracy"], mode="lines+markers", name="coefficients (basis frozen)",
        line=dict(color=color(0), width=2), text=[f"k = {int(k)}" for k in coef["k"]],
        error_y=dict(type="data", symmetric=False, array=coef["accuracy_max"] - coef["accuracy"],
                     arrayminus=coef["accuracy"] - coef["accuracy_min"]),
        hovertemplate="%{text}<br>%{x} trainable<br>accuracy %{y:.3f}<extra></extra>"))
    full = table[table["method"] == "full LoRA"]
    fig.add_trace(go.Scatter(
        x=full["trainable"], y=full["accuracy"], mode="markers", name="full LoRA",
        marker=dict(color=color(1), size=12, symbol="diamond"),
        error_y=dict(type="data", symmetric=False, array=full["accuracy_max"] - full["accuracy"],
                     arrayminus=full["accuracy"] - full["accuracy_min"]),
        hovertemplate="full LoRA<br>%{x} trainable<br>accuracy %{y:.3f}<extra></extra>"))
    for i, r in enumerate(table[~table["method"].isin(["coefficients", "full LoRA"])].itertuples()):
        dash = "dash" if r.trainable else "dot"
        fig.add_hline(y=r.accuracy, line=dict(color=NULL_COLOR if not r.trainable else color(2), dash=dash),
                      annotation_text=f"{r.method}: {r.accuracy:.3f}", annotation_position="bottom right")
    return base_layout(fig, title, xaxis=dict(title="trainable parameters", type="log"),
                       yaxis=dict(title="test accuracy", range=[0, 1.02]))
