"""The metrics' two reading passes on a Dask cluster: shards of models, a tree of partial sums.

:class:`ClusterPasses` answers what :class:`explorer.metrics.local_passes.LocalPasses` answers
(``sums``, ``measure``) with the same kernels, run on the workers:

* pass 1 — each shard's fold, group and other-side Gram sums (:func:`~explorer.cluster.shards.sums_task`)
  are added pairwise on the workers, a binary tree fixed by shard order
  (:func:`~explorer.cluster.shards.merge_task`); only the root's d x d sums reach the client;
* pass 2 — the bases (:class:`~explorer.metrics.measure.MeasureContext`) are sent once to every
  worker; each shard returns its models' rows (curves, coordinates, own subspaces).

The eigendecompositions (the shared basis, fold bases, the null) run on the client from the
sums, as locally.  Float sums in another order: eigenvalues agree with the local run to ~1e-15
relative (tested within 1e-12).
"""
from __future__ import annotations

from explorer.catalog.groups import LayerGroup
from explorer.cluster.connect import n_workers
from explorer.cluster.shards import measure_task, merge_task, shard_bounds, shard_family, sums_task
from explorer.cluster.tasks import follow
from explorer.core.progress import ProgressFn
from explorer.core.timing import stage
from explorer.metrics.measure import MeasureContext, Measured
from explorer.metrics.sums import SideSums, SumsPlan, finish_sums
from explorer.sources.family import Family


def _tree(client, leaves: list) -> object:
    """Add futures pairwise, level by level, on the workers; the root future."""
    level = list(leaves)
    while len(level) > 1:
        nxt = [client.submit(merge_task, a, b, pure=False) for a, b in zip(level[::2], level[1::2])]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class ClusterPasses:
    """Both reading passes of one layer group, by shards of models on the cluster of ``client``.

    Parameters
    ----------
    client : distributed.Client
    family : Family
    group : LayerGroup
    view : str
    """

    def __init__(self, client, family: Family, group: LayerGroup, view: str):
        self.client, self.group, self.view = client, group, view
        self.n = len(family)
        self.bounds = shard_bounds(self.n, n_workers(client))
        self.shards = [shard_family(family, i0, i1) for i0, i1 in self.bounds]

    def _leaves(self, fn, extra) -> list:
        """One task per shard: ``fn(shard, group, view, i0, extra)``."""
        return [self.client.submit(fn, shard, self.group, self.view, i0, extra, pure=False)
                for shard, (i0, _) in zip(self.shards, self.bounds)]

    def _follow(self, leaves: list, progress: ProgressFn | None, label: str, also: list = ()) -> None:
        """Progress (models done) as shards finish; the first failure is raised, the rest cancelled."""
        for _ in follow(self.client, leaves, progress, label, [i1 - i0 for i0, i1 in self.bounds], also):
            pass

    def sums(self, plan: SumsPlan, progress: ProgressFn | None = None) -> SideSums:
        """Pass 1: the fold and group sums of every model, added up on the workers."""
        with stage("pass 1: fold and group sums (cluster)"):
            leaves = self._leaves(sums_task, plan)  # small (the fold and group of each model): inline
            root = _tree(self.client, leaves)  # merges start as soon as their two shards are in
            self._follow(leaves, progress, "metrics: fitting folds (cluster)", also=[root])
            del leaves
            return finish_sums(plan, root.result())

    def measure(self, ctx: MeasureContext, progress: ProgressFn | None = None) -> Measured:
        """Pass 2: every model's rows, measured on the workers against the bases in ``ctx``."""
        # The bases may be large: sent once to every worker (a replica on each survives a worker lost).
        ctx_f = self.client.scatter(ctx, broadcast=True, hash=False)
        leaves = self._leaves(measure_task, ctx_f)
        self._follow(leaves, progress, "metrics: measuring models (cluster)")
        out = Measured()
        for part in self.client.gather(leaves):
            out.absorb(part)
        return out
