"""Tables of the Apply page and the CLI: a compression's rows, a merge's tasks, newcomers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from explorer.apply.compression import Compression
from explorer.apply.newcomer import Projection


def compression_table(comp: Compression) -> pd.DataFrame:
    """One row per compressed (group, view) and one per LoRA update: bytes, ratio, errors."""
    rows = []
    for e in comp.to_json()["entries"]:
        rows.append({"layer": e["layer"], "view": e["view"], "mode": e["mode"], "k": e["k"],
                     "bytes before": e["bytes_before"], "bytes after": e["bytes_after"], "ratio": e["ratio"],
                     "mean error": e["error_mean"], "max error": e["error_max"],
                     "mean-only error": e["mean_only_error_mean"]})
    for u in comp.updates:
        j = u.to_json()
        rows.append({"layer": u.layer, "view": "dW (update)", "mode": "", "k": None, "bytes before": None,
                     "bytes after": None, "ratio": None, "mean error": j["error_mean"],
                     "max error": float(np.nanmax(u.errors)) if np.isfinite(u.errors).any() else None,
                     "mean-only error": j["mean_only_error_mean"]})
    return pd.DataFrame(rows)


def merge_pivot(table: pd.DataFrame) -> pd.DataFrame:
    """The merge table as models (merges first) x tasks, with the mean and normalized mean."""
    order = list(dict.fromkeys(table.sort_values("kind", kind="stable", key=lambda s: s.map({"merge": 0, "model": 1}))
                               ["model"]))
    wide = table.pivot_table(index="model", columns="task", values="accuracy", sort=False).reindex(order)
    wide = wide[list(dict.fromkeys(table["task"]))]
    wide["mean"] = wide.mean(axis=1)
    wide["normalized mean"] = table.groupby("model", sort=False)["normalized"].mean().reindex(order)
    wide.insert(0, "kind", table.drop_duplicates("model").set_index("model")["kind"].reindex(order))
    return wide.reset_index()


def newcomer_table(proj: Projection) -> pd.DataFrame:
    """One row per newcomer: captured energy, held-out percentile, outlier z, nearest members."""
    return pd.DataFrame([{"name": e.name, "captured energy": e.captured_energy,
                          "held-out percentile": e.heldout_percentile, "outlier z": e.outlier,
                          "outlier": e.is_outlier,
                          "nearest": ", ".join(f"{n} ({d:.3g})" for n, d in e.nearest[:3])} for e in proj.entries])


#: Task groups of the digits zoo that share one label space, so merging can trade them off
#: (permutations and one-vs-rest relabel the classes: merging them conflicts by construction).
TRADE_OFF_GROUPS: tuple[str, ...] = ("subset", "noise", "rotation")


def default_merge_models(metadata: pd.DataFrame, n: int = 4) -> list[str]:
    """The models the Merge tab starts with: up to ``n`` of different tasks, preferring tasks of
    :data:`TRADE_OFF_GROUPS` when the metadata has a ``task_group`` column (the zoo's)."""
    if "name" not in metadata.columns:
        return []
    rows = metadata
    if "task_group" in metadata.columns:
        preferred = metadata[metadata["task_group"].astype(str).isin(TRADE_OFF_GROUPS)]
        rows = preferred if len(preferred) else metadata
    key = rows["task"].astype(str) if "task" in rows.columns else rows["name"].astype(str)
    return list(rows.loc[~key.duplicated(), "name"].astype(str))[:n]


def accuracy_by_group(curve: pd.DataFrame, metadata: pd.DataFrame, column: str = "task_group"
                      ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Mean accuracy against k per group of models, and each group's stored accuracy.

    Parameters
    ----------
    curve : DataFrame
        ``model``, ``k``, ``accuracy``, ``stored_accuracy`` (:func:`explorer.apply.compress_eval.compressed_accuracy`).
    metadata : DataFrame
        The family's metadata (``name`` and, when present, ``column``); without ``column`` every
        model is one group, ``all models``.

    Returns
    -------
    by_group : dict group -> ndarray (K,), over the sorted ks
    stored : dict group -> float
    """
    if column in metadata.columns:
        groups = metadata.set_index("name")[column].astype(str)
        labelled = curve.assign(group=curve["model"].map(groups).fillna("other"))
    else:
        labelled = curve.assign(group="all models")
    by_group, stored = {}, {}
    for g, sub in labelled.groupby("group", sort=True):
        by_group[str(g)] = sub.groupby("k")["accuracy"].mean().sort_index().to_numpy()
        stored[str(g)] = float(sub.drop_duplicates("model")["stored_accuracy"].mean())
    return by_group, stored
