"""Held-out coverage curves and their baselines, gathered for the generalization view and report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from explorer.metrics.baselines import band_limits
from explorer.pipeline.result import Analysis


@dataclass
class Coverage:
    """Mean captured energy against k for each fit, plus bands and flat reference levels.

    Attributes
    ----------
    curves : dict label -> ndarray (K,)
    bands : dict label -> (p05 (K,), p95 (K,))
        Spread across models.
    levels : dict label -> float
    """

    curves: dict[str, np.ndarray] = field(default_factory=dict)
    bands: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    levels: dict[str, float] = field(default_factory=dict)

    def table(self, max_k: int | None = None) -> pd.DataFrame:
        """One row per k, one column per curve (and the levels as constant columns)."""
        n = max((len(c) for c in self.curves.values()), default=0)
        n = min(n, max_k) if max_k else n
        out = pd.DataFrame({"k": np.arange(1, n + 1)})
        for label, c in self.curves.items():
            col = np.full(n, np.nan)
            col[: min(n, len(c))] = c[:n]
            out[label] = col
        for label, v in self.levels.items():
            out[label] = v
        return out


def coverage_curves(res: Analysis) -> Coverage:
    """Fitted, held-out (k-fold, LOO), null and random-subspace curves; the mean-only level.

    The null curve is what the fitted curve would be for a family with no shared structure: the
    strength-matched Gaussian null's mean per-model in-sample captured energy (median over draws,
    with its band), like the fitted curve a mean over models; omitted where the null's draws do
    not carry it (sides above 512, centred LoRA products, model mode).
    """
    m = res.metrics
    cov = Coverage()
    if m is None:
        return cov

    def add(label: str, per_model: np.ndarray | None) -> None:
        if per_model is None:
            return
        # NaN rows are zero models (undefined captured energy): left out, as the metrics' notes say.
        cov.curves[label] = np.nanmean(per_model, axis=0)
        cov.bands[label] = (np.nanpercentile(per_model, 5, axis=0), np.nanpercentile(per_model, 95, axis=0))

    add("fitted (in-sample)", m.energy_one)
    folds = m.heldout.n_folds if m.heldout is not None else 0
    add(f"held-out ({folds}-fold)" if folds else "held-out (k-fold)", m.curves("kfold"))
    add("held-out (leave-one-out)", m.curves("loo"))
    if m.null is not None and m.null.fitted_draws is not None:
        # Like for like: the null's mean per-model in-sample coverage, beside the data's per-model mean.
        med, lo, hi, _, _ = band_limits(m.null.fitted_draws)
        cov.curves["null (fitted, per-model mean)"] = med
        cov.bands["null (fitted, per-model mean)"] = (lo, hi)
    kmax = m.energy_one.shape[1]
    cov.curves["random subspace"] = res.random_subspace()[:kmax]
    ho = m.heldout
    # With centring the curves are shares of the centred energy, which the mean alone cannot
    # capture at all; the mean-only level is a share of the raw energy, and is labelled so.
    raw = "" if res.spectrum.center == "none" else ", share of raw energy"
    if ho is not None and ho.mean_kfold_captured is not None:
        cov.levels[f"mean-only (k-fold{raw})"] = float(np.nanmean(ho.mean_kfold_captured))
    elif ho is not None and ho.mean_loo_captured is not None:
        cov.levels[f"mean-only (LOO{raw})"] = float(np.nanmean(ho.mean_loo_captured))
    return cov


def cumulative_matrix(curves: Sequence[np.ndarray], max_components: int) -> np.ndarray:
    """Stack cumulative EVR curves of different lengths into one layers x components matrix.

    Layers of one module type can have different numbers of components (their smaller side
    differs), so the rows are padded.  A cumulative curve that has ended has reached 1, so the
    padding is 1, not NaN: the heatmap then shows a short layer as fully explained.

    Parameters
    ----------
    curves : sequence of ndarray, each shape (d_l,)
        Cumulative EVR of each layer (non-decreasing, ending at 1).
    max_components : int
        Components shown; the matrix is no wider than the longest curve.

    Returns
    -------
    ndarray, shape (L, min(max_components, max_l d_l))
        Row l is ``curves[l]`` truncated, then padded with 1.
    """
    width = int(min(max_components, max((len(c) for c in curves), default=0)))
    mat = np.ones((len(curves), width))
    for i, c in enumerate(curves):
        n = min(width, len(c))
        mat[i, :n] = np.asarray(c, dtype=float)[:n]
    return mat
