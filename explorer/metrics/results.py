"""Metrics of one decomposed layer group: k(tau), per-model energies, coordinates, coverage.

Definitions (DESIGN.md): with the shared output basis U and input basis V,

* one-sided captured energy of model i at rank k:  ||U_k^T W_i||^2 / ||W_i||^2;
* two-sided:                                       ||U_k^T W_i V_k||^2 / ||W_i||^2;
* coordinates: C_i = U_k^T W_i V_k (k x k), flattened; in model mode the scores sqrt(lambda_l) q_il.

Per-model curves are stored for k = 1..k_store, so "energy at any k" is a lookup
(:func:`energy_at`).  :mod:`explorer.metrics.passes` computes them by streaming the models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import eigh_np

LOO_CHOICES: tuple[str, ...] = ("auto", "on", "off")


@dataclass(frozen=True)
class MetricsOptions:
    """What to compute beyond the spectrum (frozen, hashable: part of the cache key).

    Parameters
    ----------
    folds : int
        k of the k-fold held-out coverage (>= 2; capped at N); 0 turns k-fold off.
    loo : {"auto", "on", "off"}
        Leave-one-out coverage: one eigh of the d x d Gram per model.  ``auto`` runs it when
        N * d^3 <= 2e10 flops (seconds on a laptop).
    seed : int
        Seed of the fold assignment and of the null draws.
    k_coord : int
        Size k of the coordinate block C_i (k x k) and of the model-mode scores.
    k_angles : int
        Dimension of each model's own subspace and of the group bases compared by angles.
    group_by : str
        Metadata column whose values define groups for group x group angles; ``auto`` uses
        ``group`` or else ``task`` when present; ``none`` turns them off.
    null_draws : int
        Draws of the strength-matched Gaussian null (0 turns it off).
    max_memory_mb : int
        Budget for the per-fold and per-group Gram sums and the in-memory model stack; parts
        that would exceed it are skipped with a note.
    """

    folds: int = 5
    loo: str = "auto"
    seed: int = 0
    k_coord: int = 8
    k_angles: int = 8
    group_by: str = "auto"
    null_draws: int = 8
    max_memory_mb: int = 2048

    def __post_init__(self) -> None:
        if not isinstance(self.folds, int) or self.folds < 0 or self.folds == 1:
            raise OptionError(f"folds must be 0 (off) or an integer >= 2, got {self.folds!r}")
        if self.loo not in LOO_CHOICES:
            raise OptionError(f"loo {self.loo!r} is not one of {', '.join(LOO_CHOICES)}")
        for name in ("k_coord", "k_angles", "max_memory_mb"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise OptionError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.null_draws, int) or self.null_draws < 0:
            raise OptionError(f"null_draws must be an integer >= 0, got {self.null_draws!r}")


@dataclass
class Metrics:
    """Everything beyond the spectrum that the views show, for one layer group.

    Arrays are float64 numpy; ``N`` models, ``K`` = number of stored curve points (<= k_store).
    Optional parts are None when not computed; ``notes`` says why.

    Attributes
    ----------
    norms2 : ndarray, shape (N,)
        ||W_i||_F^2 of the matrices as decomposed (after centering).
    energy_one : ndarray, shape (N, K)
        In-sample one-sided captured energy for k = 1..K (model mode: share of ||x_i||^2 on the
        top-k model-mode principal directions).
    energy_two : ndarray, shape (N, K2) or None
        In-sample two-sided captured energy (out/in modes).
    coords : ndarray, shape (N, k_coord * k_coord) or None
        C_i = U^T W_i V, flattened row-major (out/in modes).
    scores : ndarray, shape (N, k_coord) or None
        Model-mode scores sqrt(lambda_l) q_il (computed whenever the model kernel is).
    kernel : ndarray, shape (N, N) or None
        K_ij = <W_i, W_j>_F after centering (small families and model mode).
    other_basis : ndarray, shape (e, K2) or None
        The basis of the other side (V in out-mode, U in in-mode), used for two-sided metrics.
    folds : ndarray of int, shape (N,) or None
        Fold of each model in the k-fold coverage.
    heldout_kfold, heldout_loo : ndarray, shape (N, K) or None
        One-sided captured energy of each model by the basis fitted without its fold / itself.
    mean_kfold_captured, mean_kfold_error, mean_loo_captured, mean_loo_error : ndarray, (N,)
        Mean-only baseline: share of ||W_i||^2 along the held-out fold's mean model and relative
        error ||W_i - mu|| / ||W_i|| of reconstructing W_i by that mean (raw, uncentered W_i).
    own_overlap : ndarray, shape (N, N) or None
        Overlap of the models' own top-k_angles left singular subspaces (model x model), each from
        the SVD of the model's own matrix as read (before centering).
    own_cosines : ndarray, shape (N, k_angles) or None
        Principal cosines between each model's own subspace and the shared top-k_angles basis.
    own_vs_universal : ndarray, shape (N,) or None
        Overlap of each model's own subspace with the shared basis.
    group_names : list of str
    group_bases : ndarray, shape (G, d, k_angles) or None
    group_overlap : ndarray, shape (G, G) or None
    group_vs_universal : ndarray, shape (G,) or None
    null_* : ndarray, shape (d,) or None
        Median and 5 % / 95 % band of the strength-matched Gaussian null's EVR and cumulative EVR.
    mp_edge_evr : float or None
        Marchenko-Pastur upper edge of that null, in EVR units.
    """

    norms2: np.ndarray
    energy_one: np.ndarray
    energy_two: np.ndarray | None = None
    coords: np.ndarray | None = None
    scores: np.ndarray | None = None
    kernel: np.ndarray | None = None
    other_basis: np.ndarray | None = None
    folds: np.ndarray | None = None
    heldout_kfold: np.ndarray | None = None
    heldout_loo: np.ndarray | None = None
    mean_kfold_captured: np.ndarray | None = None
    mean_kfold_error: np.ndarray | None = None
    mean_loo_captured: np.ndarray | None = None
    mean_loo_error: np.ndarray | None = None
    own_overlap: np.ndarray | None = None
    own_cosines: np.ndarray | None = None
    own_vs_universal: np.ndarray | None = None
    group_by: str | None = None
    group_names: list[str] = field(default_factory=list)
    group_bases: np.ndarray | None = None
    group_overlap: np.ndarray | None = None
    group_vs_universal: np.ndarray | None = None
    null_evr_median: np.ndarray | None = None
    null_evr_lo: np.ndarray | None = None
    null_evr_hi: np.ndarray | None = None
    null_cum_median: np.ndarray | None = None
    null_cum_lo: np.ndarray | None = None
    null_cum_hi: np.ndarray | None = None
    mp_edge_evr: float | None = None
    null_exact: bool | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """Mean curves and scalars for ``Analysis.to_json`` (lists, JSON-ready)."""
        out: dict[str, object] = {"notes": list(self.notes)}
        for name in ("energy_one", "energy_two", "heldout_kfold", "heldout_loo"):
            a = getattr(self, name)
            if a is not None:
                out[f"{name}_mean"] = a.mean(axis=0).tolist()
        for name in ("mean_kfold_captured", "mean_kfold_error", "mean_loo_captured", "mean_loo_error"):
            a = getattr(self, name)
            if a is not None:
                out[f"{name}_mean"] = float(a.mean())
        if self.null_cum_median is not None:
            out["null_cumulative_median"] = self.null_cum_median.tolist()
            out["null_cumulative_p05"] = self.null_cum_lo.tolist()
            out["null_cumulative_p95"] = self.null_cum_hi.tolist()
            out["mp_edge_evr"] = self.mp_edge_evr
        if self.group_overlap is not None:
            out["groups"] = {"by": self.group_by, "names": self.group_names,
                             "overlap": self.group_overlap.tolist()}
        return out


def energy_at(curves: np.ndarray, k: int) -> np.ndarray:
    """Look up per-model captured energy at rank ``k`` (1-based) in stored curves (N, K).

    Ranks beyond the stored ones are refused rather than extrapolated.
    """
    if not 1 <= k <= curves.shape[-1]:
        raise OptionError(f"k must lie in 1..{curves.shape[-1]} (the stored ranks), got {k}")
    return curves[..., k - 1]


def two_sided_curve(p: torch.Tensor, v: torch.Tensor, tot: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided captured energy ||U_k^T X V_k||^2 / ||X||^2 for k = 1..min(ku, kv), and the core.

    Parameters
    ----------
    p : Tensor, shape (ku, e)
        U^T X (already centered), the one-sided projection the caller has at hand.
    v : Tensor, shape (e, kv)
    tot : float
        ||X||^2.

    Returns
    -------
    curve : ndarray, shape (min(ku, kv),)
    core : ndarray, shape (ku, kv)
        C = U^T X V.
    """
    core = (p @ v).cpu().double().numpy()
    kk = min(core.shape)
    if tot <= 0:
        return np.zeros(kk), core
    # ||C[:k, :k]||^2 for every k at once: 2-D prefix sums of C^2, read on the diagonal.
    cs = np.cumsum(np.cumsum(core**2, axis=0), axis=1)
    return np.clip(np.diagonal(cs)[:kk] / tot, 0.0, 1.0), core


def kernel_scores(kmat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Model-mode eigen-decomposition of a kernel: scores sqrt(lambda_l) q_il and in-sample curves.

    Returns
    -------
    scores : ndarray, shape (N, min(k, N))
        Sign-fixed like the engine's eigenvectors.
    curves : ndarray, shape (N, N)
        Share of each model's ||x_i||^2 on the top-k directions, k = 1..N.
    """
    vals, vecs = eigh_np(kmat)
    contrib = vecs**2 * vals[None, :]
    diag = np.diag(kmat)
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = np.where(diag[:, None] > 0, np.cumsum(contrib, axis=1) / diag[:, None], 0.0)
    kk = min(k, len(vals))
    return vecs[:, :kk] * np.sqrt(vals[:kk]), np.clip(curves, 0.0, 1.0)
