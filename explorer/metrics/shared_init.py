"""Shared LoRA initialisation: adapters whose A factors start from one random init.

PEFT initialises A at random (B at zero), and fine-tuning moves A little for large models, so
adapters trained from one init seed keep nearly parallel A factors, while independent inits are
nearly orthogonal in R^(r n).  The critics found half of one public collection sharing one A
init: its "shared subspace" in view A is then the init, not something learned.  So the adapters
are clustered by |cos| of their flattened A factors (average linkage, cut at ``threshold``), and
the verdict is given within each cluster.

Accuracy of the rule, measured on ``zoo:digits-lora`` (60 adapters from one A init, 60 from their
own; small layers trained long, so A moves far from its init: within the shared group the median
|cos| is 0.31, between independent adapters 0.04): at threshold 0.2 the largest cluster holds 58
of the 60 shared-init adapters and no independent one; independent adapters form only clusters of
2-3, below the minimum cluster size, so they are reported as independent
(``tests/test_shared_init.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import scipy.cluster.hierarchy
import scipy.spatial.distance
import torch

# |cos| of flattened A factors above which adapters are linked (average linkage).
THRESHOLD = 0.2
# Smallest cluster reported as a shared initialisation: 3 adapters, or 5 % of the family.
MIN_SHARE = 0.05


@dataclass(frozen=True)
class InitClusters:
    """Adapters grouped by a shared A initialisation.

    Attributes
    ----------
    labels : ndarray of int, shape (N,)
        Cluster of each adapter, 0 for the largest shared-init cluster, 1 for the next...; -1 for
        adapters in no cluster of at least ``min_size`` (independent inits).
    sizes : list of int
        Size of each cluster 0, 1, ... (descending).
    threshold : float
    min_size : int
    median_within, median_between : float
        Median |cos| of the A factors within the clusters and between all other pairs (NaN if none).
    """

    labels: np.ndarray
    sizes: list[int]
    threshold: float
    min_size: int
    median_within: float
    median_between: float

    @property
    def shared(self) -> bool:
        """True when at least one cluster of a shared initialisation was found."""
        return bool(self.sizes)

    def describe(self) -> str:
        """One sentence for the page and the JSON."""
        n = len(self.labels)
        if not self.shared:
            return (f"no shared A initialisation: no {self.min_size} or more of the {n} adapters have A factors with "
                    f"|cos| above {self.threshold:g} (median between adapters {self.median_between:.2f})")
        parts = ", ".join(str(s) for s in self.sizes)
        return (f"{sum(self.sizes)} of {n} adapters share an A initialisation, in clusters of {parts} "
                f"(median |cos| of their A factors {self.median_within:.2f}, against {self.median_between:.2f} "
                f"between the others)")


def a_cosines(factors: Iterable[torch.Tensor]) -> np.ndarray:
    """|cos| between the flattened A factors of N adapters (zero-padded to one rank), shape (N, N).

    Zero rows of a padded lower-rank factor add nothing to either norm or inner product, so a
    rank-4 adapter is compared with the first 4 rows of a rank-8 one.
    """
    # float32 products: 500 adapters of 16 x 4096 are 131 MB, and |cos| needs no more digits.
    flat = torch.stack([a.reshape(-1).to(torch.float32) for a in factors])
    k = (flat @ flat.T).double().numpy()
    norms = np.sqrt(np.clip(np.diag(k), 0.0, None))
    denom = np.outer(norms, norms)
    return np.clip(np.abs(np.divide(k, denom, out=np.zeros_like(k), where=denom > 0)), 0.0, 1.0)


def init_clusters(cos: np.ndarray, threshold: float = THRESHOLD, min_size: int | None = None) -> InitClusters:
    """Average-linkage clusters of adapters whose A factors' |cos| exceeds ``threshold``.

    Parameters
    ----------
    cos : ndarray, shape (N, N)
        From :func:`a_cosines`.
    threshold : float
    min_size : int, optional
        Smallest cluster reported (default max(3, 5 % of N)).
    """
    n = cos.shape[0]
    min_size = int(min_size if min_size is not None else max(3, int(np.ceil(MIN_SHARE * n))))
    labels = np.full(n, -1)
    if n >= 2:
        dist = 1.0 - cos
        np.fill_diagonal(dist, 0.0)
        tree = scipy.cluster.hierarchy.linkage(scipy.spatial.distance.squareform(dist, checks=False), "average")
        raw = scipy.cluster.hierarchy.fcluster(tree, t=1.0 - threshold, criterion="distance")
        ids, counts = np.unique(raw, return_counts=True)
        # Largest first; ties by the smallest member index, so the numbering is deterministic.
        keep = sorted((-c, int(np.flatnonzero(raw == i)[0]), i) for i, c in zip(ids, counts) if c >= min_size)
        for new, (_, _, old) in enumerate(keep):
            labels[raw == old] = new
    sizes = [int((labels == c).sum()) for c in range(int(labels.max()) + 1)]
    off = ~np.eye(n, dtype=bool)
    within = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & off
    between = ~within & off
    med = lambda mask: float(np.median(cos[mask])) if mask.any() else float("nan")  # noqa: E731
    return InitClusters(labels, sizes, float(threshold), min_size, med(within), med(between))
