"""Per-layer summary rows: k at 50/90/99 %, EVR of the top 1 and top 16, and the ratio to the null."""
from __future__ import annotations

from explorer.pipeline.result import Analysis


def layer_summary(name: str, res: Analysis) -> dict[str, object]:
    """One row of the per-layer table.

    ``top16 / null`` is the cumulative EVR of the top 16 components divided by the null median's:
    1 means no more concentration than a strength-matched random family.
    """
    sp = res.spectrum
    cum = sp.cumulative
    k16 = min(16, len(cum)) - 1
    row: dict[str, object] = {
        "layer": name,
        "shape": "×".join(map(str, res.group.shape)),
        "k@50%": sp.k_at(0.5),
        "k@90%": sp.k_at(0.9),
        "k@99%": sp.k_at(0.99),
        "EVR top 1": round(float(sp.evr[0]), 4),
        "EVR top 16": round(float(cum[k16]), 4),
    }
    m = res.metrics
    if m is not None and m.null_cum_median is not None:
        row["null top 16"] = round(float(m.null_cum_median[k16]), 4)
        row["top16 / null"] = round(float(cum[k16] / m.null_cum_median[k16]), 3) if m.null_cum_median[k16] > 0 else None
    return row
