"""A self-contained HTML report (plotly.js embedded, no network) plus CSV and safetensors files.

``python -m explorer report SOURCE --layer G [--layer G2 ...] --out DIR`` writes::

    DIR/report.html                       every view for every layer group, figures inline
    DIR/<layer>.<mode>.spectrum.csv        j, singular value, EVR, cumulative, null median/p05/p95
    DIR/<layer>.<mode>.models.csv          per-model labels, captured energy at k(0.9), overlaps
    DIR/<layer>.<mode>.coverage.csv        captured energy against k for each fit and baseline
    DIR/<layer>.<mode>.basis.safetensors   eigenvalues, basis, coordinates (see export.basis_tensors)
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from explorer.core.atomic import atomic_write_bytes
from explorer.core.progress import ProgressFn
from explorer.core.version import __version__
from explorer.metrics.verdict import holm
from explorer.figures import (
    coverage_figure,
    embedding_figure,
    overlap_heatmap_figure,
    scree_figure,
    universal_overlap_figure,
)
from explorer.outputs.export import basis_safetensors
from explorer.pipeline.result import Analysis
from explorer.present.curves import coverage_curves
from explorer.present.embedding import embed
from explorer.present.overlap import overlap_scale
from explorer.present.tables import default_group_column, metadata_table

TAU = 0.9


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`write_report`."""

    html: Path
    data: tuple[Path, ...]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def spectrum_table(res: Analysis) -> pd.DataFrame:
    """One row per component j: singular value, EVR, cumulative EVR and the null's median/band."""
    sp = res.spectrum
    df = pd.DataFrame({"j": np.arange(1, len(sp.eigenvalues) + 1), "singular_value": sp.singular_values,
                       "evr": sp.evr, "cumulative_evr": sp.cumulative})
    m = res.metrics
    if m is not None and m.null is not None:
        n = len(df)
        df["null_evr_median"] = m.null.evr_median[:n]
        df["null_evr_p05"] = m.null.evr_lo[:n]
        df["null_evr_p95"] = m.null.evr_hi[:n]
    return df


def models_table(res: Analysis, k: int) -> pd.DataFrame:
    """Per-model labels, captured energy at rank k (in-sample and held-out) and overlaps."""
    df = metadata_table(res)
    m = res.metrics
    if m is None:
        return df
    kk = min(k, m.energy_one.shape[1])
    df[f"energy_one_sided_k{kk}"] = m.energy_one[:, kk - 1]
    if m.energy_two is not None:
        df[f"energy_two_sided_k{min(kk, m.energy_two.shape[1])}"] = m.energy_two[:, min(kk, m.energy_two.shape[1]) - 1]
    for kind in ("kfold", "loo"):
        if m.curves(kind) is not None:
            df[f"heldout_{kind}_k{kk}"] = m.curves(kind)[:, kk - 1]
    if m.overlaps is not None:
        df["overlap_with_universal"] = m.overlaps.vs_universal
    return df


def layer_figures(res: Analysis) -> list[tuple[str, go.Figure]]:
    """The figures of one analysis: spectrum, overlap, embedding, generalization (those that apply)."""
    sp, m = res.spectrum, res.metrics
    name = f"{res.group.name} · {res.view} · {sp.mode}-mode"
    figs = []
    figs.append(("Spectrum", scree_figure(sp, TAU, null=m.null if m is not None else None, mp_edge_evr=m.mp_edge_evr if m else None,
                                          title=f"Scree — {name}")))
    if m is None:
        return figs
    table = metadata_table(res)
    color = default_group_column(table)
    scale = overlap_scale(res)
    if scale is not None:
        figs.append(("Overlap", overlap_heatmap_figure(m.overlaps.own, res.models, expectation=scale.expectation,
                                                       title=f"Model × model overlap — {name}")))
        groups = table[color].astype(str).tolist() if color is not None else None
        figs.append(("Overlap with the universal subspace",
                     universal_overlap_figure(res.models, m.overlaps.vs_universal, groups,
                                              expectation=scale.expectation,
                                              title=f"Overlap with the universal subspace — {name}")))
    feats = m.coords if m.coords is not None else m.scores
    if feats is not None and len(res.models) >= 3:
        figs.append(("Embedding", embedding_figure(embed(feats, "pca", 2), table, color,
                                                   title=f"Models in the shared basis (PCA) — {name}")))
    cov = coverage_curves(res)
    figs.append(("Generalization", coverage_figure(cov.curves, bands=cov.bands, levels=cov.levels,
                                                   title=f"Held-out coverage — {name}")))
    return figs


def _summary_html(res: Analysis) -> str:
    sp, m = res.spectrum, res.metrics
    rows = [("models", len(res.models)), ("shape", "×".join(map(str, res.group.shape))), ("view", res.view),
            ("mode", sp.mode), ("centering", sp.center),
            ("k at 50 / 90 / 99 %", f"{sp.k_at(0.5)} / {sp.k_at(0.9)} / {sp.k_at(0.99)}"),
            ("EVR of the top component", f"{sp.evr[0]:.4f}")]
    if m is not None and m.null is not None:
        k = min(16, len(sp.cumulative))
        rows.append((f"top-{k} cumulative EVR vs null median", f"{sp.cumulative[k - 1]:.4f} vs {m.null.cum_median[k - 1]:.4f}"))
        rows.append(("null", m.null.caption))
    rows.append(("cache key", res.cache_key or "—"))
    return "<table>" + "".join(f"<tr><th>{html.escape(str(a))}</th><td>{html.escape(str(b))}</td></tr>" for a, b in rows) + "</table>"


def skipped_html(results: Sequence[Analysis]) -> str:
    """The members left out of the analyses (name, file, reason), as an HTML table; ``""`` if none.

    A member skipped for NaN/Inf in one layer group only is listed once, with the groups it was
    left out of.
    """
    rows: dict[tuple[str, str, str], list[str]] = {}
    for res in results:
        for s in res.skipped:
            rows.setdefault((s.name, s.path, s.reason), []).append(res.group.name)
    if not rows:
        return ""
    every = len(results)
    body = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(p)}</td><td>{html.escape(r)}</td>"
        f"<td>{'all' if len(groups) == every else html.escape(', '.join(groups))}</td></tr>"
        for (n, p, r), groups in rows.items())
    return (f'<section id="skipped"><h2>{len(rows)} members skipped</h2><p>These members of the family could '
            "not be used and are left out of the analyses below (<code>--strict</code> refuses such a family "
            "instead).</p><table><tr><th>member</th><th>path</th><th>reason</th><th>layer groups</th></tr>"
            f"{body}</table></section>")


def verdicts_html(results: Sequence[Analysis]) -> str:
    """The atlas of the reported groups: one verdict per group, p-values Holm-adjusted across them."""
    if not any(r.metrics is not None for r in results):
        return ""
    adjusted = holm(np.array([r.verdict().p_value for r in results]))
    rows = []
    for res, p in zip(results, adjusted):
        v = res.verdict(p_adjusted=float(p) if np.isfinite(p) else None)
        cells = (res.group.name, res.view, v.label, f"{v.effect:.3g}", f"{v.p_value:.2g}", f"{v.heldout_ratio:.2f}",
                 v.summary)
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ('<section id="verdicts"><h2>Verdicts</h2><p>Each group against its baselines (top-k energy against '
            "the strength-matched Gaussian null, held-out coverage, the mean-only reconstruction); p-values "
            f"adjusted by Holm's step-down across the {len(results)} groups.</p><table><tr><th>layer group</th>"
            "<th>view</th><th>verdict</th><th>effect</th><th>p (Holm)</th><th>held-out / fitted</th><th>in words</th>"
            "</tr>" + "".join(rows) + "</table></section>")


def write_report(results: Sequence[Analysis], out: str | Path,
                 progress: ProgressFn | None = None) -> ReportFiles:
    """Write report.html and the data files for several analyses into ``out``.

    Each file is written to a temporary name and renamed, so an interrupted run leaves no
    half-written file under its final name.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data: list[Path] = []
    sections = []
    for i, res in enumerate(results):
        stem = f"{_safe(res.group.name)}.{_safe(res.view)}.{res.spectrum.mode}"
        _write(out / f"{stem}.spectrum.csv", spectrum_table(res).to_csv(index=False).encode(), data)
        _write(out / f"{stem}.models.csv", models_table(res, res.spectrum.k_at(TAU)).to_csv(index=False).encode(), data)
        _write(out / f"{stem}.coverage.csv", coverage_curves(res).table().to_csv(index=False).encode(), data)
        _write(out / f"{stem}.basis.safetensors", basis_safetensors(res), data)
        figs = "".join(
            f"<h3>{html.escape(t)}</h3>" + f.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{i}-{j}")
            for j, (t, f) in enumerate(layer_figures(res)))
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in (res.metrics.notes if res.metrics else []))
        sections.append(f"<section><h2>{html.escape(res.group.name)}</h2>{_summary_html(res)}"
                        f"{'<ul>' + notes + '</ul>' if notes else ''}{figs}</section>")
        if progress:
            progress(i + 1, len(results), "writing report")
    family = results[0].family if results else ""
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Subspace Explorer report — {html.escape(family)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#1b1f24}}table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ddd;padding:4px 10px;text-align:left}}th{{background:#f3f6fa}}section{{margin-bottom:3em}}</style></head>
<body><h1>Subspace Explorer report</h1><p>Family <b>{html.escape(family)}</b> ({html.escape(results[0].source if results else "")}),
{len(results[0].models) if results else 0} models. Generated by subspace-explorer {__version__}. Every claim is shown beside its
baselines: the strength-matched Gaussian null (median, a band of stated coverage, Marchenko–Pastur edge), the random-subspace
expectation k/d, held-out coverage and the mean-only reconstruction.</p>{skipped_html(results)}{verdicts_html(results)}{''.join(sections)}</body></html>"""
    path = out / "report.html"
    _write(path, page.encode("utf-8"), None)
    return ReportFiles(path, tuple(data))


def _write(path: Path, blob: bytes, written: list[Path] | None) -> None:
    atomic_write_bytes(path, blob)
    if written is not None:
        written.append(path)
