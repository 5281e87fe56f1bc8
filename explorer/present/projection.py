"""Accuracy of models projected onto k shared components (the paper's central experiment).

Glue between an :class:`~explorer.pipeline.analyze.Analysis` and a zoo family's evaluator: takes the
shared basis of the analysed mode (and the centering mean it was fitted around), replaces each
model's layer by its projection, and measures test accuracy per task group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from explorer.core.errors import OptionError
from explorer.pipeline.result import Analysis
from explorer.zoo.evaluators import evaluator_for
from explorer.zoo.projection import accuracy_vs_k, heldout_accuracy_vs_k

GROUP_COLUMN = "task_group"


@dataclass
class ProjectedAccuracy:
    """Accuracy against k.

    Attributes
    ----------
    ks : ndarray, shape (K,)
    per_model : DataFrame
        Columns ``model``, ``k``, ``accuracy``, ``stored_accuracy``, ``group``.
    by_group : dict group -> ndarray (K,)
        Mean accuracy of the group's models at each k.
    original_by_group : dict group -> float
        Mean unprojected accuracy of the group.
    chance : float or None
    heldout_by_group : dict group -> ndarray (K,), or None
        The same with each model projected onto a basis fitted without its fold (None when the
        analysis has no k-fold assignment).
    """

    ks: np.ndarray
    per_model: pd.DataFrame
    by_group: dict[str, np.ndarray]
    original_by_group: dict[str, float]
    chance: float | None
    heldout_by_group: dict[str, np.ndarray] | None = None

    def table(self) -> pd.DataFrame:
        """Group x k table of mean accuracy (plus the unprojected accuracy)."""
        df = pd.DataFrame(self.by_group, index=pd.Index(self.ks, name="k")).T
        df.columns = [f"k={k}" for k in self.ks]
        df.insert(0, "unprojected", pd.Series(self.original_by_group))
        if self.heldout_by_group is not None:
            held = pd.DataFrame(self.heldout_by_group, index=[f"held-out k={k}" for k in self.ks]).T
            df = df.join(held)
        return df.reset_index(names="group")


def supports(res: Analysis) -> bool:
    """True if ``res`` can be evaluated: a zoo family with an evaluator, out or in mode, a known layer."""
    if res.spectrum.mode not in ("out", "in") or not res.source.startswith("zoo:"):
        return False
    ev = evaluator_for(res.source)
    return ev is not None and res.group.name in ev.layers and res.view in ev.views


def accuracy_against_k(res: Analysis, ks: Sequence[int], heldout: bool = True) -> ProjectedAccuracy:
    """Project the analysed layer of every model onto the top-k shared directions, for each k.

    Out-mode projects the output side (U_k U_kᵀ W), in-mode the input side (W V_k V_kᵀ), around
    the centering mean the basis was fitted with (:func:`explorer.zoo.projection.accuracy_vs_k`).
    With ``heldout`` (and a k-fold assignment in the analysis) each model is also projected onto
    the basis fitted without its fold (:func:`explorer.zoo.projection.heldout_accuracy_vs_k`):
    the in-sample curve alone flatters the subspace.

    Raises
    ------
    OptionError
        If the family has no evaluator, or the mode/view/layer cannot be projected.
    """
    if not supports(res):
        raise OptionError(f"{res.source} / {res.group.name} ({res.view}, {res.spectrum.mode}-mode): "
                          "accuracy after projection needs a zoo family with an evaluator and out or in mode")
    kmax = res.spectrum.basis.shape[1]
    ks = np.array(sorted({int(k) for k in ks if 1 <= k <= kmax}))
    if len(ks) == 0:
        raise OptionError(f"k values must lie in 1..{kmax}")
    df = accuracy_vs_k(res, ks.tolist())
    meta = evaluator_for(res.source).metadata.set_index("name")
    groups = meta[GROUP_COLUMN] if GROUP_COLUMN in meta else pd.Series("all", index=meta.index)
    df["group"] = df["model"].map(groups)
    mean_by_group = lambda frame: {g: sub.groupby("k")["accuracy"].mean().reindex(ks).to_numpy()  # noqa: E731
                                   for g, sub in frame.groupby("group")}
    by_group = mean_by_group(df)
    held = None
    ho = res.metrics.heldout if res.metrics is not None else None
    if heldout and ho is not None and ho.folds is not None:
        hdf = heldout_accuracy_vs_k(res, ks.tolist(), ho.folds)
        hdf["group"] = hdf["model"].map(groups)
        held = mean_by_group(hdf)
    original = {g: float(sub.groupby("model")["stored_accuracy"].first().mean()) for g, sub in df.groupby("group")}
    # One chance line only when every task has the same chance level (one-vs-rest tasks do not).
    chance = float(meta["chance"].iloc[0]) if "chance" in meta and meta["chance"].nunique() == 1 else None
    return ProjectedAccuracy(ks, df, by_group, original, chance, held)
