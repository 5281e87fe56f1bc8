"""The shared-initialisation check of a LoRA layer group: cluster the adapters by their A factors
(:mod:`explorer.metrics.shared_init`) and give the verdict within each cluster.

When part of a collection shares one A init, a verdict on the whole family mixes the init's
structure with what training learned; within a cluster of one init, and within the adapters of
independent inits, the verdict says which part is shared beyond the null.  Each within-cluster
analysis is an ordinary cached analysis of the sub-family of its members.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from explorer.catalog.groups import LayerGroup, build_catalog
from explorer.catalog.views import stream_for_view
from explorer.core.errors import OptionError
from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.metrics.shared_init import MIN_SHARE, THRESHOLD, InitClusters, a_cosines, init_clusters
from explorer.metrics.verdict import Verdict
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache, family_fingerprint, make_key
from explorer.pipeline.result import ENGINE_VERSION
from explorer.sources.family import Family

# Fewest members a within-cluster verdict is computed for (held-out folds and a null need them).
MIN_VERDICT_MODELS = 3


@dataclass
class ClusterVerdict:
    """The verdict within one cluster (``cluster`` -1: the adapters of independent inits)."""

    cluster: int
    members: list[str]
    verdict: Verdict | None
    cache_key: str | None = None

    @property
    def name(self) -> str:
        return "independent inits" if self.cluster < 0 else f"shared init {self.cluster + 1}"

    def to_json(self) -> dict[str, Any]:
        v = self.verdict.to_json() if self.verdict is not None else None
        return {"cluster": self.name, "n_models": len(self.members), "members": list(self.members), "verdict": v,
                "cache_key": self.cache_key}


@dataclass
class InitCheck:
    """Clusters of one LoRA group's adapters by A initialisation, and the verdict within each."""

    group: str
    view: str
    clusters: InitClusters
    within: list[ClusterVerdict]

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.clusters.threshold, "min_size": self.clusters.min_size,
                "sizes": list(self.clusters.sizes), "summary": self.clusters.describe(),
                "within": [c.to_json() for c in self.within]}


def _lora_group(family: Family, group: str | LayerGroup) -> LayerGroup | None:
    if isinstance(group, LayerGroup):
        return group if group.kind == "lora" else None
    for g in build_catalog(family):
        if g.name == group:
            return g if g.kind == "lora" else None
    raise OptionError(f"{family.source}: no layer group {group!r}")


def init_clusters_of(family: Family, group: str | LayerGroup, cache: ResultCache | None = None) -> InitClusters | None:
    """The A-factor clusters of a LoRA group (None for a dense group).

    With ``cache``, through that result cache: the clustering reads every adapter's A factor
    (500 files for a real family, seconds in the app's threads), and the Spectrum page shows it on
    every load, so a page opened from the cache must not read the family again.  The key covers
    the family's files, the group, the rule's constants and :data:`ENGINE_VERSION`.
    """
    g = _lora_group(family, group)
    if g is None:
        return None
    def cluster() -> InitClusters:
        return init_clusters(a_cosines(stream_for_view(family, g, "A").open()))

    if cache is None:
        return cluster()
    key = make_key("init-clusters", ENGINE_VERSION, family_fingerprint(family), asdict(g), THRESHOLD, MIN_SHARE)

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        c = cluster()
        return ({"labels": np.asarray(c.labels, dtype=np.int64)},
                {"sizes": list(c.sizes), "threshold": c.threshold, "min_size": c.min_size,
                 "median_within": c.median_within, "median_between": c.median_between})

    (arrays, meta), _ = cache.get_or_compute(key, compute)
    return InitClusters(arrays["labels"], [int(s) for s in meta["sizes"]], float(meta["threshold"]),
                        int(meta["min_size"]), float(meta["median_within"]), float(meta["median_between"]))


def shared_init_check(family: Family, group: str | LayerGroup, view: str, options: SpectralOptions = SpectralOptions(),
                      metrics: MetricsOptions = MetricsOptions(), cache: ResultCache | None = None, k: int | None = None,
                      strict: bool = False, clusters: InitClusters | None = None,
                      scheduler: str | None = None) -> InitCheck | None:
    """Cluster a LoRA group's adapters by A init; verdict within each cluster of >= 3 members.

    Returns None for a dense group.  The clusters (unless given) and each cluster's analysis go
    through ``cache`` (default: the result cache).  Without a shared init (no cluster) nothing is analysed again:
    the family's own verdict is the within-cluster one.  ``scheduler``: each cluster's analysis is
    computed on that Dask cluster (:func:`explorer.pipeline.analyze.analyze`).
    """
    g = _lora_group(family, group)
    if g is None:
        return None
    cache = cache or ResultCache()
    clusters = clusters if clusters is not None else init_clusters_of(family, g, cache)
    within: list[ClusterVerdict] = []
    if clusters.shared:
        names = [m.name for m in family.models]
        for c in list(range(len(clusters.sizes))) + [-1]:
            members = [n for n, lab in zip(names, clusters.labels) if lab == c]
            if not members:
                continue
            if len(members) < MIN_VERDICT_MODELS:
                within.append(ClusterVerdict(c, members, None))
                continue
            keep = set(members)
            sub = replace(family, models=[m for m in family.models if m.name in keep])
            res = analyze_cached(sub, g.name, view, options, metrics, cache=cache, strict=strict, scheduler=scheduler)
            within.append(ClusterVerdict(c, members, res.verdict(k), res.cache_key))
    return InitCheck(g.name, view, clusters, within)
