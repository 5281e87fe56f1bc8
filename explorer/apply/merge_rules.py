"""The merging rules, on task vectors tau_i = W_i - W_base (one matrix or vector per model).

Each rule returns the merged task vector tau; the merged weight is W_base + tau.

* ``mean``: tau = (1/N) sum_i tau_i — the critics' control.
* ``task-arithmetic`` (Ilharco et al. 2023): tau = lambda sum_i tau_i (lambda = 0.3 by default,
  FusionBench's default scaling).
* ``ties`` (Yadav et al. 2023): trim each tau_i to its ``density`` share of largest magnitudes
  (default 0.2), elect each entry's sign as the sign of the sum of the trimmed values, average
  the trimmed values that agree with it (a disjoint mean: the models that voted the other way or
  were trimmed do not count), scale by lambda (default 1).
* ``subspace``: the paper's "combine the coefficients" — each model's coefficients in the shared
  basis, C_i = U_k^T (X_i - Z), averaged per direction, C = (1/N) sum_i C_i, and the merge rebuilt
  as Z + U_k C.  Averaging is linear, so this is exactly the projection of the mean merge onto
  Z + span(U_k) (the critics' "subspace merge = mean merge", up to the directions dropped);
  tested as an identity.  For LoRA it is applied to each factor in its own basis (A in its input
  space, B in its output space; each B_i carrying its adapter's scale s_i), the paper's way:
  tau = B^ A^ with B^ = U_k mean_i(U_k^T s_i B_i), A^ = mean_i(A_i V_k) V_k^T (adapters of lower rank
  zero-padded to the largest: their missing rows and columns count as zeros in the means).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from explorer.core.errors import OptionError

MERGE_METHODS: tuple[str, ...] = ("subspace", "task-arithmetic", "ties", "mean")


@dataclass(frozen=True)
class MergeOptions:
    """How to merge (frozen, hashable).

    Parameters
    ----------
    method : {"subspace", "task-arithmetic", "ties", "mean"}
    k : int or None
        Directions of the subspace merge (default: k(0.9) of each group's spectrum).
    lam : float or None
        The scale lambda of task arithmetic (default 0.3) and TIES (default 1).
    density : float
        TIES: share of each task vector's entries kept, in (0, 1].
    """

    method: str = "subspace"
    k: int | None = None
    lam: float | None = None
    density: float = 0.2

    def __post_init__(self) -> None:
        if self.method not in MERGE_METHODS:
            raise OptionError(f"merge method {self.method!r} is not one of {', '.join(MERGE_METHODS)}")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise OptionError(f"k must be an integer >= 1, got {self.k!r}")
        if not 0.0 < float(self.density) <= 1.0:
            raise OptionError(f"density must lie in (0, 1], got {self.density!r}")

    @property
    def scale(self) -> float:
        """lambda: given, else 0.3 for task arithmetic and 1 for TIES (and 1 otherwise)."""
        if self.lam is not None:
            return float(self.lam)
        return 0.3 if self.method == "task-arithmetic" else 1.0

    def rule(self) -> str:
        """The rule in words (for the JSON and the page)."""
        return {
            "mean": "tau = mean_i tau_i",
            "task-arithmetic": f"tau = {self.scale:g} * sum_i tau_i",
            "ties": f"tau = {self.scale:g} * disjoint mean of the tau_i trimmed to their top {self.density:g} "
                    "by magnitude, over the entries agreeing with the elected sign (sign of the trimmed sum)",
            "subspace": "tau = Z + U_k mean_i U_k^T (tau_i - Z): coefficients averaged per direction in the shared "
                        "basis (LoRA: per factor, A in its input basis, B in its output basis)",
        }[self.method]


def _stack(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    if not taus:
        raise OptionError("nothing to merge: no models chosen")
    shape = tuple(taus[0].shape)
    for t in taus:
        if tuple(t.shape) != shape:
            raise OptionError(f"task vectors of shapes {shape} and {tuple(t.shape)} cannot be merged")
    return torch.stack([t.to(torch.float64) for t in taus])


def merge_mean(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """(1/N) sum_i tau_i."""
    return _stack(taus).mean(0)


def merge_task_arithmetic(taus: Sequence[torch.Tensor], lam: float = 0.3) -> torch.Tensor:
    """lambda sum_i tau_i."""
    return lam * _stack(taus).sum(0)


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """tau with all but its ceil(density * numel) largest-magnitude entries set to 0 (ties kept by order)."""
    flat = tau.reshape(-1)
    keep = max(1, int(-(-density * flat.numel() // 1)))
    if keep >= flat.numel():
        return tau.clone()
    idx = torch.topk(flat.abs(), keep, sorted=False).indices
    out = torch.zeros_like(flat)
    out[idx] = flat[idx]
    return out.reshape(tau.shape)


def merge_ties(taus: Sequence[torch.Tensor], density: float = 0.2, lam: float = 1.0) -> torch.Tensor:
    """TIES-merging: trim, elect sign, disjoint mean, scale."""
    t = torch.stack([trim(x, density) for x in _stack(taus)])
    sign = torch.sign(t.sum(0))
    agree = (torch.sign(t) == sign) & (t != 0)
    count = agree.sum(0)
    total = torch.where(agree, t, torch.zeros_like(t)).sum(0)
    return lam * torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def merge_coefficients(coefs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The subspace rule on coefficients: their mean per direction, C = (1/N) sum_i C_i."""
    return _stack(coefs).mean(0)


def merge_elementwise(taus: Sequence[torch.Tensor], opts: MergeOptions) -> torch.Tensor:
    """``mean``, ``task-arithmetic`` or ``ties`` of the task vectors (the subspace rule needs a basis)."""
    if opts.method == "mean":
        return merge_mean(taus)
    if opts.method == "task-arithmetic":
        return merge_task_arithmetic(taus, opts.scale)
    if opts.method == "ties":
        return merge_ties(taus, opts.density, opts.scale)
    raise OptionError(f"merge method {opts.method!r} combines coefficients in a basis, not entries")
