"""Permutation null of group x group overlaps: are the metadata groups' subspaces more alike, or
more distinct, than groups of randomly relabelled models?

The k/d line says how much two *random* subspaces overlap; it says nothing about groups drawn
from one family, whose bases all lean towards the family's shared directions.  Relabelling the
models at random (group sizes kept) and refitting every group basis gives the overlap such
groups have when the labels mean nothing.  Each model's Gram X_i X_i^T is formed once, so a
permutation costs one (G x N) @ (N x d^2) product and G top-k eigendecompositions of d x d.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from explorer.core.linalg import centered_gram, eigh_top
from explorer.metrics import angles
from explorer.metrics.moments import ModelMoments, as_moments

# Relabellings drawn: p-values down to 1/100.
PERMUTATIONS = 99


def affordable(n: int, d: int, budget_bytes: int) -> bool:
    """True when the N per-model Grams (N x d^2 float64) fit ``budget_bytes``."""
    return n * d * d * 8 <= budget_bytes


def permuted_group_overlaps(sides: ModelMoments | Sequence[torch.Tensor], groups: np.ndarray, n_groups: int, k: int, center: str,
                            permutations: int = PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """Group x group overlaps of bases refitted after relabelling the models at random.

    Parameters
    ----------
    sides : sequence of Tensor, each (d, e)
        Each model's side matrix (the Gram side first), raw (centring is applied per group, as
        the observed group bases are: :func:`explorer.core.linalg.centered_gram`).
    groups : ndarray of int, shape (N,)
        Group of each model (-1: in no group; kept out of every relabelling).
    n_groups : int
    k : int
        Dimension of each group basis.
    center : {"none", "model", "vector"}

    Returns
    -------
    ndarray, shape (permutations, G, G)
    """
    inside = np.flatnonzero(groups >= 0)
    mom = as_moments(sides).rows(inside)
    grams, sums, d, e = mom.grams, mom.sums, mom.d, mom.e                   # (N, d^2), (N, d e)
    rng = np.random.default_rng([seed, 7])
    out = np.empty((permutations, n_groups, n_groups))
    for p in range(permutations):
        labels = rng.permutation(groups[inside])
        onehot = torch.zeros(n_groups, len(mom), dtype=torch.float64)
        onehot[torch.from_numpy(labels), torch.arange(len(mom))] = 1.0
        g_all, s_all, counts = onehot @ grams, onehot @ sums, onehot.sum(dim=1)
        bases = [eigh_top(centered_gram(g_all[c].reshape(d, d), s_all[c].reshape(d, e), int(counts[c]), center), k)[1]
                 .numpy() for c in range(n_groups)]
        out[p] = angles.overlap_matrix(bases)
    return out


def permutation_p(observed: np.ndarray, permuted: np.ndarray, lower: bool) -> np.ndarray:
    """(1 + #{permuted <= observed}) / (P + 1) when ``lower`` (groups more distinct than chance),
    else with >= (more alike); elementwise over the leading axis of ``permuted``."""
    hit = permuted <= observed if lower else permuted >= observed
    return (1.0 + hit.sum(axis=0)) / (permuted.shape[0] + 1.0)


def off_diagonal_mean(mats: np.ndarray) -> np.ndarray:
    """Mean of the off-diagonal entries of a (..., G, G) stack of overlap matrices."""
    g = mats.shape[-1]
    mask = ~np.eye(g, dtype=bool)
    return mats[..., mask].mean(axis=-1) if g > 1 else np.full(mats.shape[:-2], np.nan)


def group_permutation_summary(overlap: np.ndarray, permuted: np.ndarray | None) -> dict[str, float] | None:
    """The mean between-group overlap against its permutation null (None without one).

    Returns ``{observed, median, lo, hi, p_distinct, p_alike, permutations}``: ``p_distinct`` is the
    share of relabellings whose groups overlap as little as the real ones (small: the groups are
    more distinct than chance), ``p_alike`` the other tail; lo/hi the 5 % / 95 % quantiles.
    """
    if permuted is None or overlap.shape[0] < 2:
        return None
    obs = float(off_diagonal_mean(overlap))
    perm = off_diagonal_mean(permuted)
    return {"observed": obs, "median": float(np.median(perm)), "lo": float(np.quantile(perm, 0.05)),
            "hi": float(np.quantile(perm, 0.95)), "p_distinct": float(permutation_p(obs, perm, True)),
            "p_alike": float(permutation_p(obs, perm, False)), "permutations": float(perm.shape[0])}
