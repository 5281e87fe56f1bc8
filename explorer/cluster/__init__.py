"""Run analyses on a Dask distributed cluster (:mod:`distributed`), with the local kernels.

Two levels of parallelism (README, "Running on a cluster"):

* layer groups as independent tasks (:func:`explorer.cluster.tasks.run_tasks`: the atlas, and
  analyses whose solver does not sum a Gram over the models);
* inside one group, the out/in-mode Gram sums as a tree reduction over shards of models
  (:class:`explorer.cluster.passes.ClusterPasses`): each worker reads its own files and sends
  back d x d partial sums and per-model numbers, never the tensors.

Nothing here imports ``distributed`` at module level: the local path never loads Dask.
"""
