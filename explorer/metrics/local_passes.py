"""The two reading passes of the out/in-mode metrics, run here over one stream of every model.

The metrics ask a *passes* object for what needs the models themselves: ``sums(plan, progress)``
(pass 1, :func:`explorer.metrics.sums.accumulate`) and ``measure(ctx)`` (pass 2,
:func:`explorer.metrics.measure.measure_models`).  :class:`LocalPasses` answers both by reading
the stream on this machine; a cluster answers them by shards of models on its workers
(:class:`explorer.cluster.passes.ClusterPasses`), with the same kernels.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Protocol, Sequence

import torch

from explorer.core.backend import pick_device, pick_dtype
from explorer.core.errors import InputError
from explorer.core.progress import ProgressFn
from explorer.core.threads import is_small, single_threaded
from explorer.core.timing import stage
from explorer.metrics.measure import MeasureContext, Measured, measure_models
from explorer.metrics.results import MetricsOptions
from explorer.metrics.sums import SideSums, SumsPlan, accumulate, finish_sums, plan_sums, side_matrices


class Passes(Protocol):
    """What reads the models: pass 1's sums and pass 2's measurements."""

    def sums(self, plan: SumsPlan, progress: ProgressFn | None) -> SideSums: ...

    def measure(self, ctx: MeasureContext, progress: ProgressFn | None) -> Measured: ...


class LocalPasses:
    """Both passes over ``open_stream`` (a fresh pass per call), on this machine.

    Parameters
    ----------
    open_stream : callable() -> iterable of Tensor (m, n), LowRank or (B, A, scale)
    n : int
    shape : (m, n)
    """

    def __init__(self, open_stream: Callable[[], Iterable[torch.Tensor]], n: int, shape: tuple[int, int]):
        self.open_stream, self.n, self.shape = open_stream, n, tuple(shape)

    def _items(self, plan_or_ctx, progress, label):
        return side_matrices(self.open_stream, self.n, self.shape, plan_or_ctx.mode, plan_or_ctx.dtype,
                             plan_or_ctx.device, progress, label)

    def sums(self, plan: SumsPlan, progress: ProgressFn | None = None) -> SideSums:
        """Pass 1 over every model (one shard)."""
        with stage("pass 1: fold and group sums"):
            return finish_sums(plan, accumulate(self._items(plan, progress, "metrics: fitting folds"), plan))

    def measure(self, ctx: MeasureContext, progress: ProgressFn | None = None) -> Measured:
        """Pass 2 over every model."""
        return measure_models(self._items(ctx, progress, "metrics: measuring models"), ctx)


def side_sums(
    open_stream: Callable[[], Iterable[torch.Tensor]],
    n_models: int,
    shape: tuple[int, int],
    spectral_options,
    mopts: MetricsOptions,
    labels: Sequence[Mapping[str, str]] = (),
    progress: ProgressFn | None = None,
    passes: Passes | None = None,
) -> SideSums:
    """Pass 1 of the out/in-mode metrics, on its own: one read of every model.

    Its total Gram and sum are exactly what the decomposition's Gram path accumulates, so the
    pipeline decomposes ``gram`` itself (:func:`explorer.engine.dense.decompose_gram`) and hands
    the sums to :func:`~explorer.metrics.passes.compute_metrics` (``sums=``): the Gram is built
    once per analysis.  ``passes`` reads the models (default: :class:`LocalPasses` over
    ``open_stream``; a cluster's shards otherwise).
    """
    so = spectral_options.resolved()
    if so.mode not in ("out", "in"):
        raise InputError(f"side sums are defined for out/in modes, not {so.mode!r}")
    device = pick_device(so.device)
    dtype = pick_dtype(so.dtype, device)
    plan = plan_sums(n_models, shape, so, mopts, labels, device, dtype)
    with single_threaded(is_small(shape, n_models, device.type)):
        return (passes or LocalPasses(open_stream, n_models, shape)).sums(plan, progress)
