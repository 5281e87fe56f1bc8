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
        Draws of the strength-matched Gaussian null asked for (0 turns it off): 100 give a
        distribution-free 90 % band; where 100 would exceed the compute budget fewer are made
        (at least 5), and the band states its construction and coverage.
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
    null_draws: int = 100
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
class NullBand:
    """The strength-matched Gaussian null's spectrum: median and a band of stated coverage.

    Attributes
    ----------
    evr_median, evr_lo, evr_hi : ndarray, shape (d,)
        Median and band limits of the EVR at each component index.
    cum_median, cum_lo, cum_hi : ndarray, shape (d,)
        The same for the cumulative EVR.
    mp_edge_evr : float
        Marchenko-Pastur upper edge in EVR units.
    draws : int
        Null draws the band comes from.
    draws_asked : int
        Draws asked for (more than ``draws`` when the budget cut them; the band says so).
    coverage : float
        Probability that the band holds a null spectrum at each component (0.90 for a 5-95 % band).
    band_method, construction : str
        How the band was formed (order statistics, or a t interval); what the null matches.
    cum_draws : ndarray, shape (draws, K)
        Each draw's cumulative EVR at the first K <= 256 components (p-values of top-k energy).
    fitted_draws : ndarray, shape (draws, K'), or None
        Each draw's mean per-model in-sample captured energy at k = 1..K' (like the fitted curve).
    """

    evr_median: np.ndarray
    evr_lo: np.ndarray
    evr_hi: np.ndarray
    cum_median: np.ndarray
    cum_lo: np.ndarray
    cum_hi: np.ndarray
    mp_edge_evr: float
    draws: int
    draws_asked: int
    coverage: float
    band_method: str
    construction: str
    cum_draws: np.ndarray
    fitted_draws: np.ndarray | None = None

    @property
    def band_name(self) -> str:
        """Legend name of the band, with its real coverage: ``"null 90 % band"``."""
        return f"null {100 * self.coverage:.0f} % band"

    @property
    def caption(self) -> str:
        """One line for a figure caption or report: construction, draws and band."""
        cut = f" (of {self.draws_asked} asked: the rest would exceed the compute budget)" if self.draws_asked > self.draws else ""
        return (f"{self.construction}; {self.draws} draws{cut}; band: {self.band_method}, "
                f"holds {100 * self.coverage:.0f} % of null spectra")

    @property
    def evr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(median, p05, p95) of the EVR, each shape (d,): what the scree figure draws."""
        return self.evr_median, self.evr_lo, self.evr_hi

    @property
    def cumulative(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(median, p05, p95) of the cumulative EVR, each shape (d,)."""
        return self.cum_median, self.cum_lo, self.cum_hi


@dataclass
class HeldOut:
    """Held-out coverage and the mean-only baseline (``N`` models, ``K`` stored ranks).

    Attributes
    ----------
    folds : ndarray of int, shape (N,) or None
        Fold of each model in the k-fold coverage (None when k-fold was off or skipped).
    kfold, loo : ndarray, shape (N, K) or None
        One-sided captured energy of each model by the basis fitted without its fold / itself.
    mean_kfold_captured, mean_kfold_error, mean_loo_captured, mean_loo_error : ndarray, (N,) or None
        Mean-only baseline: share of ||W_i||^2 along the held-out fold's mean model and relative
        error ||W_i - mu|| / ||W_i|| of reconstructing W_i by that mean (raw, uncentered W_i).
    """

    folds: np.ndarray | None = None
    kfold: np.ndarray | None = None
    loo: np.ndarray | None = None
    mean_kfold_captured: np.ndarray | None = None
    mean_kfold_error: np.ndarray | None = None
    mean_loo_captured: np.ndarray | None = None
    mean_loo_error: np.ndarray | None = None

    @property
    def n_folds(self) -> int:
        """Number of folds (0 when k-fold coverage was not computed)."""
        return int(self.folds.max() + 1) if self.folds is not None else 0


@dataclass
class Overlaps:
    """The models' own top-k subspaces against each other and against the shared basis.

    Attributes
    ----------
    own : ndarray, shape (N, N)
        Overlap of the models' own top-k_angles left singular subspaces (model x model), each from
        the SVD of the model's own matrix as read (before centering).
    cosines : ndarray, shape (N, k_angles)
        Principal cosines between each model's own subspace and the shared top-k_angles basis.
    vs_universal : ndarray, shape (N,)
        Overlap of each model's own subspace with the shared basis.
    """

    own: np.ndarray
    cosines: np.ndarray
    vs_universal: np.ndarray

    @property
    def k(self) -> int:
        """Dimension k of the subspaces compared."""
        return int(self.cosines.shape[1])


@dataclass
class Groups:
    """Bases fitted per metadata group, and their overlaps (``G`` groups).

    Attributes
    ----------
    by : str
        The metadata column that defines the groups.
    names : list of str, length G
    bases : ndarray, shape (G, d, k_angles)
    overlap : ndarray, shape (G, G)
    vs_universal : ndarray, shape (G,)
    permuted : ndarray, shape (P, G, G), or None
        The overlaps of group bases refitted after relabelling the models at random (group sizes
        kept; :mod:`explorer.metrics.permutation`); None when too large to compute (``notes``).
    """

    by: str
    names: list[str]
    bases: np.ndarray
    overlap: np.ndarray
    vs_universal: np.ndarray
    permuted: np.ndarray | None = None


@dataclass
class Stability:
    """Subsampling of one layer group (:mod:`explorer.metrics.subsample`; S sizes, R draws, T taus).

    Attributes
    ----------
    sizes : ndarray of int, shape (S,): subsample sizes N' (the last is N itself, one draw).
    k_tau, overlap : ndarray, shape (S, R)
        k(0.9) of each subsample, and the overlap of its top-k basis with the whole family's
        (NaN where a size has fewer draws).
    k : int
        Dimension of the compared bases.
    evr_lo, evr_hi, cum_lo, cum_hi : ndarray, shape (K,)
        5-95 % half-sampling band of the EVR and cumulative EVR (first K components).
    k_ci : ndarray, shape (T, 2)
        5-95 % half-sampling band of k(tau) for tau in ``taus`` (shape (T,)), from ``halves`` halves.
    """

    sizes: np.ndarray
    k_tau: np.ndarray
    overlap: np.ndarray
    k: int
    evr_lo: np.ndarray
    evr_hi: np.ndarray
    cum_lo: np.ndarray
    cum_hi: np.ndarray
    k_ci: np.ndarray
    taus: np.ndarray
    halves: int


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
    heldout : HeldOut or None
    overlaps : Overlaps or None
    groups : Groups or None
    null : NullBand or None
        The strength-matched Gaussian null (None when skipped: see ``notes``).
    stability : Stability or None
        k(tau) against N and the half-sampling band of the scree (None when too large: ``notes``).
    mp_edge_evr : float or None
        Marchenko-Pastur upper edge of that null, in EVR units (kept when the band is skipped).
    notes : list of str
    """

    norms2: np.ndarray
    energy_one: np.ndarray
    energy_two: np.ndarray | None = None
    coords: np.ndarray | None = None
    scores: np.ndarray | None = None
    kernel: np.ndarray | None = None
    other_basis: np.ndarray | None = None
    heldout: HeldOut | None = None
    overlaps: Overlaps | None = None
    groups: Groups | None = None
    null: NullBand | None = None
    stability: Stability | None = None
    mp_edge_evr: float | None = None
    notes: list[str] = field(default_factory=list)

    def curves(self, kind: str) -> np.ndarray | None:
        """Per-model captured-energy curves (N, K) of one kind, or None when not computed.

        ``kind``: ``one`` / ``two`` (in-sample one- / two-sided), ``kfold`` / ``loo`` (held-out).
        """
        if kind not in ENERGY_KINDS:
            raise OptionError(f"energy kind {kind!r} is not one of {', '.join(ENERGY_KINDS)}")
        if kind in ("one", "two"):
            return self.energy_one if kind == "one" else self.energy_two
        return getattr(self.heldout, kind) if self.heldout is not None else None

    def summary(self) -> dict[str, object]:
        """Mean curves and scalars for ``Analysis.to_json`` (lists, JSON-ready; schema 1 keys)."""
        out: dict[str, object] = {"notes": list(self.notes)}
        for kind, name in zip(ENERGY_KINDS, ("energy_one", "energy_two", "heldout_kfold", "heldout_loo")):
            a = self.curves(kind)
            if a is not None:
                out[f"{name}_mean"] = np.nanmean(a, axis=0).tolist()  # NaN rows: zero models
        if self.heldout is not None:
            for name in ("mean_kfold_captured", "mean_kfold_error", "mean_loo_captured", "mean_loo_error"):
                a = getattr(self.heldout, name)
                if a is not None:
                    out[f"{name}_mean"] = float(np.nanmean(a))
        if self.null is not None:
            nb = self.null
            out.update(null_cumulative_median=nb.cum_median.tolist(), null_cumulative_p05=nb.cum_lo.tolist(),
                       null_cumulative_p95=nb.cum_hi.tolist(), null_band_coverage=nb.coverage, null_draws=nb.draws,
                       null_construction=nb.caption, mp_edge_evr=self.mp_edge_evr)
        if self.stability is not None:  # half-sampling 5-95 % band of k(tau), keyed like k_at
            out["k_at_ci"] = {f"{t:g}": [int(a), int(b)] for t, (a, b) in zip(self.stability.taus, self.stability.k_ci)}
        if self.groups is not None:
            out["groups"] = {"by": self.groups.by, "names": self.groups.names,
                             "overlap": self.groups.overlap.tolist()}
        return out


# The nested parts of Metrics, by field name (for serialisation).
PARTS: dict[str, type] = {"heldout": HeldOut, "overlaps": Overlaps, "groups": Groups, "null": NullBand,
                          "stability": Stability}
ENERGY_KINDS: tuple[str, ...] = ("one", "two", "kfold", "loo")


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
    return two_sided_from_core((p @ v).cpu().double().numpy(), tot)


def two_sided_from_core(core: np.ndarray, tot: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`two_sided_curve` from the core C = U^T X V (ku x kv) at hand (for a factored X,
    C = (U^T s L)(R V) without the ku x e projection)."""
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
