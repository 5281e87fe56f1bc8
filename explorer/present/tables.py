"""Tables shown beside the figures: the models' metadata, per-layer summary rows, skipped members.

Pages, the report and the CLI build their tables here, so one rule gives one table everywhere.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from explorer.metrics.sums import MAX_GROUPS
from explorer.pipeline.result import Analysis
from explorer.sources.family import Skipped

# Label columns tried, in order, to colour points and bars by group when none is chosen.
GROUP_COLUMNS: tuple[str, ...] = ("task_group", "group", "init_group", "task")
#: A label column with at most this many distinct values is coloured as categories (one colour
#: each), numeric or not; a numeric column with more gets a continuous colour scale.
MAX_CATEGORIES = 12


def metadata_table(res: Analysis) -> pd.DataFrame:
    """One row per model: ``name`` and its metadata labels (columns as the labels have them).

    Returns
    -------
    DataFrame, shape (N, 1 + number of label columns)
    """
    return pd.DataFrame([{"name": n, **lab} for n, lab in zip(res.models, res.labels)])


def group_columns(table: pd.DataFrame) -> list[str]:
    """The label columns of ``table`` that split the models into 2..MAX_GROUPS groups.

    These are the columns group x group overlaps can be fitted by (the metrics pass keeps one
    Gram per group, up to :data:`explorer.metrics.sums.MAX_GROUPS`), and the ones worth
    colouring a chart by: a column with one value says nothing, one with a value per model is
    an identifier.

    Parameters
    ----------
    table : DataFrame, shape (N, columns)
        As :func:`metadata_table` builds it; ``name`` is never a candidate.

    Returns
    -------
    list of str
        In the table's column order.
    """
    return [c for c in table.columns if c != "name" and 2 <= table[c].nunique() <= MAX_GROUPS]


def default_group_column(table: pd.DataFrame) -> str | None:
    """The first of :data:`GROUP_COLUMNS` that is one of :func:`group_columns`, or None."""
    candidates = group_columns(table)
    return next((c for c in GROUP_COLUMNS if c in candidates), None)


def is_categorical(col: pd.Series) -> bool:
    """Whether a label column is coloured as categories rather than on a continuous scale.

    A column is categorical unless every value is a number and it has more than
    :data:`MAX_CATEGORIES` distinct values: a numeric label with few values (a seed shared by
    one group of adapters, a LoRA rank) names groups, not positions on a scale.

    Parameters
    ----------
    col : Series
        One label column of :func:`metadata_table`.

    Returns
    -------
    bool
    """
    numeric = pd.to_numeric(col, errors="coerce")
    return not bool(numeric.notna().all()) or int(col.nunique()) <= MAX_CATEGORIES


def category_order(col: pd.Series) -> list[str]:
    """The distinct values of ``col`` as legend entries (strings), in the order they are shown.

    Numeric columns are sorted by value (``1, 2, 10``, not ``1, 10, 2``); other columns keep
    the order of first appearance.

    Parameters
    ----------
    col : Series
        One label column of :func:`metadata_table`.

    Returns
    -------
    list of str
        Each value as ``str(value)`` (missing values as ``"nan"``), once.
    """
    text = col.astype(str)
    numeric = pd.to_numeric(col, errors="coerce")
    keys = list(dict.fromkeys(text))
    if numeric.notna().all():
        first = dict(zip(text, numeric))
        keys.sort(key=lambda k: float(first[k]))
    return keys


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
    if m is not None and m.null is not None:
        null_cum = m.null.cum_median
        row["null top 16"] = round(float(null_cum[k16]), 4)
        row["top16 / null"] = round(float(cum[k16] / null_cum[k16]), 3) if null_cum[k16] > 0 else None
    return row


def skipped_table(skipped: Sequence[Skipped]) -> pd.DataFrame:
    """One row per member left out of an analysis: ``member``, ``file`` and ``reason``.

    A member listed twice (NaN/Inf in several layer groups of one family) keeps its first row,
    as the CLI's stderr lines and the report do.

    Returns
    -------
    DataFrame, shape (number of distinct members, 3)
    """
    first: dict[str, Skipped] = {}
    for s in skipped:
        first.setdefault(s.name, s)
    return pd.DataFrame([{"member": s.name, "file": s.path, "reason": s.reason} for s in first.values()],
                        columns=["member", "file", "reason"])
