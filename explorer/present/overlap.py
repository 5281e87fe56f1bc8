"""The scale every overlap view is read against: the random-subspace expectation k/d."""
from __future__ import annotations

from dataclasses import dataclass

from explorer.pipeline.result import Analysis


@dataclass(frozen=True)
class OverlapScale:
    """Subspace size and ambient dimension of one analysis' overlap views.

    Attributes
    ----------
    k : int
        Dimension of the subspaces compared (each model's own top-k, the shared top-k basis).
    d : int
        Dimension of the space they live in (the side the basis spans).
    """

    k: int
    d: int

    @property
    def expectation(self) -> float:
        """Expected overlap Σcos²θ / k of two independent uniformly random k-dim subspaces of R^d."""
        return self.k / self.d


def overlap_scale(res: Analysis) -> OverlapScale | None:
    """The :class:`OverlapScale` of ``res``, or None when no overlaps were computed.

    ``k`` is read from the stored overlaps, not from ``MetricsOptions.k_angles``: the metrics
    pass caps it by the basis size, and the figures must state the k they show.
    """
    m = res.metrics
    if m is None or m.overlaps is None:
        return None
    return OverlapScale(k=m.overlaps.k, d=int(res.spectrum.basis.shape[0]))
