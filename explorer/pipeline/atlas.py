"""The atlas of a whole model: every layer group of a family, each with its verdict.

One analysis per (layer group, view), each through the disk cache, so an atlas interrupted half
way resumes where it stopped and a second run is all cache hits.  The verdicts' p-values are
adjusted across all entries by Holm's step-down (:func:`explorer.metrics.verdict.holm`): with
dozens of groups, some would beat the null at 5 % by chance alone.

JSON schema ``subspace-explorer/atlas/1``: ``{schema, family, source, n_models, k, alpha, entries,
skipped, notes}``; each entry holds ``layer`` (the group name), ``index``, ``module`` (the module
type), ``view``, ``mode``, ``center``, ``n_models``, ``k_at``, ``top1_evr``, ``topk_evr``,
``null_top1_evr``, ``null_topk_evr`` (the null's medians), ``cache_key``, ``verdict`` (label,
p_value (adjusted), p_raw, effect, effect_ci, heldout_ratio, mean_ratio, summary, notes) and, for
LoRA groups, ``shared_init`` (threshold, min_size, cluster sizes, summary, and ``within``: the
verdict within each cluster of a shared A init and within the independent adapters).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from explorer.catalog.groups import LayerGroup, build_catalog
from explorer.catalog.views import views_for
from explorer.cluster.connect import connect
from explorer.cluster.tasks import run_tasks
from explorer.core.errors import OptionError
from explorer.core.progress import ProgressFn
from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.metrics.verdict import ALPHA, Verdict, holm
from explorer.pipeline.analyze import analysis_payload, analyze_cached, cache_key
from explorer.pipeline.cache import ResultCache
from explorer.pipeline.result import Analysis
from explorer.pipeline.shared_init import InitCheck, init_clusters_of, shared_init_check
from explorer.sources.family import Family, Skipped

ATLAS_SCHEMA = "subspace-explorer/atlas/1"
DEFAULT_VIEWS: tuple[str, ...] = ("A", "B")


@dataclass
class AtlasEntry:
    """One (layer group, view) of the atlas: its analysis and its verdict."""

    group: LayerGroup
    view: str
    analysis: Analysis
    verdict: Verdict
    init: InitCheck | None = None

    def to_json(self) -> dict[str, Any]:
        sp, m, k = self.analysis.spectrum, self.analysis.metrics, self.verdict.k
        null = m.null if m is not None else None
        return {
            "layer": self.group.name, "index": self.group.index, "module": self.group.module_type,
            "view": self.view, "mode": sp.mode, "center": sp.center, "n_models": sp.n_models,
            "k_at": self.analysis.k_at(),
            "top1_evr": float(sp.evr[0]) if len(sp.evr) else None,
            "topk_evr": float(sp.cumulative[k - 1]) if len(sp.cumulative) >= k else None,
            "null_top1_evr": float(null.cum_median[0]) if null is not None else None,
            "null_topk_evr": float(null.cum_median[k - 1]) if null is not None and len(null.cum_median) >= k else None,
            "cache_key": self.analysis.cache_key,
            "verdict": self.verdict.to_json(),
            "shared_init": self.init.to_json() if self.init is not None else None,
        }


@dataclass
class Atlas:
    """Every analysed (layer group, view) of one family, in catalog order."""

    family: str
    source: str
    n_models: int
    k: int | None
    alpha: float
    entries: list[AtlasEntry]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``subspace-explorer/atlas/1`` document (NaN written as null)."""
        return {"schema": ATLAS_SCHEMA, "family": self.family, "source": self.source, "n_models": self.n_models,
                "k": self.k, "alpha": self.alpha, "entries": [e.to_json() for e in self.entries],
                "skipped": [s.to_json() for s in self.skipped], "notes": list(self.notes)}


def atlas_plan(family: Family, modules: str | None = None, views: Sequence[str] = DEFAULT_VIEWS) -> list[tuple[LayerGroup, str]]:
    """The (group, view) pairs an atlas analyses: groups held by every model whose name matches
    ``modules`` (a regex, searched), each in every requested view it has (dense groups: ``full``).

    Raises
    ------
    OptionError
        If the regex is invalid, or nothing matches.
    """
    try:
        pattern = re.compile(modules) if modules else None
    except re.error as exc:
        raise OptionError(f"--modules {modules!r} is not a regular expression: {exc}") from exc
    plan = []
    for g in build_catalog(family):
        if g.n_models != len(family) or (pattern is not None and not pattern.search(g.name)):
            continue
        have = views_for(family, g)
        chosen = [v for v in views if v in have] or [have[0]]
        plan.extend((g, v) for v in chosen)
    if not plan:
        what = f" matching {modules!r}" if modules else ""
        raise OptionError(f"{family.source}: no layer group{what} is held by every model")
    return plan


def prefetch(family: Family, plan: Sequence[tuple[LayerGroup, str]], options: SpectralOptions,
             metrics: MetricsOptions, cache: ResultCache, scheduler: str, strict: bool = False,
             progress: ProgressFn | None = None) -> int:
    """Compute the planned analyses missing from ``cache`` on the cluster; return how many.

    Layer groups are independent tasks (each a whole analysis on one worker, its files read
    there); each payload is stored under its own key as it arrives, so an interrupted run keeps
    what finished and the entries are exactly those a local run would store.
    """
    jobs, keys = [], []
    for g, v in plan:
        key = cache_key(family, g, v, options, metrics)
        if not cache.path(key).exists():
            jobs.append((g, v))
            keys.append(key)
    if not jobs:
        return 0
    client = connect(scheduler)
    fam = client.scatter(family, broadcast=True, hash=False)  # once per worker, not once per task
    tasks = [(fam, g, v, options, metrics, strict) for g, v in jobs]
    for i, payload in run_tasks(client, analysis_payload, tasks, progress, "atlas (cluster)"):
        cache.get_or_compute(keys[i], lambda p=payload: p)
    return len(jobs)


def run_atlas(family: Family, modules: str | None = None, views: Sequence[str] = DEFAULT_VIEWS,
              k: int | None = None, options: SpectralOptions = SpectralOptions(),
              metrics: MetricsOptions = MetricsOptions(), progress: ProgressFn | None = None,
              cache: ResultCache | None = None, alpha: float = ALPHA, strict: bool = False,
              init_check: bool = True, scheduler: str | None = None) -> Atlas:
    """Analyse every planned (group, view) through the cache and judge each, Holm-adjusted.

    Parameters
    ----------
    family : Family
    modules : str, optional
        Regex on group names (e.g. ``q_proj|v_proj``).
    views : sequence of str
        Views for LoRA groups (default A and B, each in its own mode: in for A, out for B).
    k : int, optional
        Rank of every verdict's top-k statistic (default min(16, d/4) per group).
    progress : callable(done, total, label), optional
        Called once per entry, label ``"atlas"`` (a bar with an ETA in the CLI).
    init_check : bool
        LoRA groups: cluster the adapters by A initialisation and, where some share one, give the
        verdict within each cluster too (:mod:`explorer.pipeline.shared_init`; unadjusted p-values).
    scheduler : str, optional
        Dask scheduler address: the entries missing from the cache are computed on its workers,
        one task per (group, view), and stored in the local cache as they arrive (:func:`prefetch`).
    """
    if k is not None and k < 1:
        raise OptionError(f"--k must be >= 1, got {k}")
    plan = atlas_plan(family, modules, views)
    cache = cache or ResultCache()
    if scheduler:
        prefetch(family, plan, options, metrics, cache, scheduler, strict, progress)
    analyses = []
    for i, (g, v) in enumerate(plan):
        if progress is not None:
            progress(i, len(plan), "atlas")
        analyses.append(analyze_cached(family, g.name, v, options, metrics, cache=cache, strict=strict))
    if progress is not None:
        progress(len(plan), len(plan), "atlas")
    raw = [a.verdict(k) for a in analyses]
    adjusted = holm(np.array([r.p_value for r in raw]))
    entries = []
    clusters: dict[str, Any] = {}
    for (g, v), a, r, p in zip(plan, analyses, raw, adjusted):
        verdict = a.verdict(k, p_adjusted=float(p) if np.isfinite(p) else None)
        init = None
        if init_check and g.kind == "lora":
            if g.name not in clusters:  # one clustering per group, whatever the views
                clusters[g.name] = init_clusters_of(family, g, cache)
            init = shared_init_check(family, g, v, options, metrics, cache, k, strict, clusters[g.name], scheduler)
        entries.append(AtlasEntry(g, v, a, verdict, init))
    skipped: dict[str, Skipped] = {s.name: s for s in family.skipped}
    for a in analyses:
        for s in a.skipped:
            skipped.setdefault(s.name, s)
    notes = [f"p-values adjusted by Holm's step-down across {len(plan)} entries (family-wise error {alpha:g})"]
    if k is None:
        notes.append("k per group: min(16, side / 4)")
    return Atlas(family.name, family.source, len(family), k, alpha, entries, list(skipped.values()), notes)
