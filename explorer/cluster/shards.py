"""Shards of a family's models, and what a worker does with one: read its files, sum, measure.

A shard is a contiguous range of model indices [i0, i1) of the family, sent to a worker as a
:class:`~explorer.sources.family.Family` of those models only (paths and names: a few kB); the
worker reads the files itself and returns sums or per-model rows indexed by the *global* model
index, so the client puts them together whatever order the shards finish in.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from explorer.catalog.groups import LayerGroup
from explorer.catalog.views import stream_for_view
from explorer.core.lowrank import LowRank
from explorer.metrics.measure import MeasureContext, Measured, measure_models
from explorer.metrics.sums import PartialSums, SumsPlan, accumulate, side_matrices
from explorer.sources.family import Family

#: Shards per worker: more than one, so a slow or restarted worker does not hold up the rest.
SHARDS_PER_WORKER = 2


def shard_bounds(n: int, workers: int, per_worker: int = SHARDS_PER_WORKER) -> list[tuple[int, int]]:
    """Contiguous [i0, i1) ranges covering 0..n-1: ``per_worker`` per worker, at most n, as even as possible."""
    shards = max(1, min(n, workers * per_worker))
    return [(n * k // shards, n * (k + 1) // shards) for k in range(shards)]


def shard_family(family: Family, i0: int, i1: int) -> Family:
    """The family of models i0..i1-1 (same base, source and labels; headers re-read by the worker)."""
    return replace(family, models=list(family.models[i0:i1]), skipped=[])


def shard_items(shard: Family, group: LayerGroup, view: str, i0: int, mode: str, dtype, device
                ) -> Iterator[tuple[int, LowRank]]:
    """(global model index, side matrix) for every model of ``shard``, read from its files."""
    stream = stream_for_view(shard, group, view)
    for j, x in side_matrices(stream.open, len(shard), stream.shape, mode, dtype, device, None, ""):
        yield i0 + j, x


def sums_task(shard: Family, group: LayerGroup, view: str, i0: int, plan: SumsPlan) -> PartialSums:
    """Pass 1 over one shard (runs on a worker): its fold and group sums, compacted to travel."""
    return accumulate(shard_items(shard, group, view, i0, plan.mode, plan.dtype, plan.device), plan).compact()


def merge_task(a: PartialSums, b: PartialSums) -> PartialSums:
    """One node of the tree reduction (runs on a worker): the sums of two sets of shards."""
    return a.absorb(b).compact()


def measure_task(shard: Family, group: LayerGroup, view: str, i0: int, ctx: MeasureContext) -> Measured:
    """Pass 2 over one shard (runs on a worker): each model's rows against the bases in ``ctx``."""
    return measure_models(shard_items(shard, group, view, i0, ctx.mode, ctx.dtype, ctx.device), ctx)
