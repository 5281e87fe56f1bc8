"""The atlas as tables: one flat row per entry, and layers x modules grids for the heatmaps."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from explorer.pipeline.atlas import Atlas

# Grid values the Atlas page can colour by: (entry verdict field, its meaning).
GRID_VALUES: dict[str, str] = {
    "effect": "top-k EVR over the null's median",
    "heldout_ratio": "held-out over fitted coverage at k",
}


def atlas_table(atlas: Atlas) -> pd.DataFrame:
    """One row per (layer group, view): k(0.9), top-k EVR against the null's, and the verdict."""
    rows = []
    for e in atlas.entries:
        j, v = e.to_json(), e.verdict
        rows.append({
            "layer": j["layer"], "index": j["index"], "module": j["module"], "view": j["view"], "mode": j["mode"],
            "models": j["n_models"], "k(0.9)": j["k_at"]["0.9"], "k": v.k, "top-k EVR": j["topk_evr"],
            "null top-k EVR": j["null_topk_evr"], "effect": v.effect, "effect low": v.effect_ci[0],
            "effect high": v.effect_ci[1], "p (Holm)": v.p_value, "p (raw)": v.p_raw,
            "held-out / fitted": v.heldout_ratio, "subspace / mean-only": v.mean_ratio, "verdict": v.label,
            "summary": v.summary,
        })
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class AtlasGrid:
    """One view's entries laid out layers x module types.

    Attributes
    ----------
    layers : list of str
        Row labels (layer index, or ``-`` for groups without one).
    modules : list of str
        Column labels: module types with the layer number replaced by ``{i}``.
    values : ndarray, shape (len(layers), len(modules))
        The chosen verdict field (NaN where no entry).
    labels : ndarray of object, same shape
        Each cell's verdict label ("" where no entry).
    groups : ndarray of object, same shape
        Each cell's layer-group name (None where no entry): what a click opens.
    """

    layers: list[str]
    modules: list[str]
    values: np.ndarray
    labels: np.ndarray
    groups: np.ndarray


def atlas_grid(atlas: Atlas, view: str, value: str = "effect") -> AtlasGrid:
    """The ``view`` entries of ``atlas`` as a layers x modules grid of ``value`` (see GRID_VALUES)."""
    if value not in GRID_VALUES:
        raise KeyError(f"grid value {value!r} is not one of {', '.join(GRID_VALUES)}")
    entries = [e for e in atlas.entries if e.view == view]
    layers = sorted({e.group.index for e in entries if e.group.index is not None})
    rows = [str(i) for i in layers] + (["-"] if any(e.group.index is None for e in entries) else [])
    modules = list(dict.fromkeys(e.group.module_type for e in entries))
    vals = np.full((len(rows), len(modules)), np.nan)
    labels = np.full(vals.shape, "", dtype=object)
    groups = np.full(vals.shape, None, dtype=object)
    for e in entries:
        r = rows.index("-" if e.group.index is None else str(e.group.index))
        c = modules.index(e.group.module_type)
        vals[r, c] = getattr(e.verdict, value)
        labels[r, c] = e.verdict.label
        groups[r, c] = e.group.name
    return AtlasGrid(rows, modules, vals, labels, groups)
