"""Baselines that decide whether a spectrum shows real shared structure (DESIGN.md, "Baselines").

* Strength-matched Gaussian null (what it matches: :mod:`explorer.metrics.null_spec`; its draws,
  each exact in law: :mod:`explorer.metrics.null_draws`) within a draw budget, and its band, which
  holds the coverage it states (:func:`band_limits`).
* Marchenko-Pastur edge of that null (:func:`explorer.metrics.null_spec.mp_edge_evr`).
* Random-subspace expectation k/d.

Mean-only reconstruction of held-out models lives with the coverage code
(:mod:`explorer.metrics.heldout`), which has the fold means at hand.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

from explorer.core.errors import OptionError
from explorer.core.progress import ProgressFn
from explorer.metrics.null_draws import bartlett, null_eigenvalues
from explorer.metrics.null_spec import NullSpec, mp_edge, mp_edge_evr, raw_energies
from explorer.metrics.results import NullBand

# Flops of all draws of one null (about 20 s on 2 cores): beyond it fewer draws are made, and the
# band says so (its coverage stays what it states: see band_limits).
NULL_FLOPS = 1.5e12
# Fewest draws a costly null is cut to (the user may ask for fewer).
MIN_DRAWS = 5
# Cumulative EVR of each draw kept for p-values of the top-k energy.
KEEP_COMPONENTS = 256
# Nominal coverage of every band: 5 % to 95 %.
LEVEL = 0.90
# Largest Gram side whose null draws also give the per-model fitted curve (eigenvectors: ~3x the cost).
FITTED_SIDE = 512


def affordable_draws(spec: NullSpec, draws: int) -> int:
    """Draws made of ``draws`` asked: all within :data:`NULL_FLOPS`, else as many as fit, at least
    :data:`MIN_DRAWS` (or ``draws``, if fewer were asked)."""
    if draws < 1:
        raise OptionError(f"null draws must be >= 1, got {draws}")
    fit = int(NULL_FLOPS // max(1.0, spec.flops_per_draw()))
    return int(min(draws, max(fit, MIN_DRAWS)))


def band_limits(a: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, str]:
    """Median and a prediction band of ``level`` coverage, per column of draws ``a`` (n x d).

    With n + 1 >= 2 / (1 - level) draws (19 for 90 %) the band is distribution-free: order
    statistics a and n + 1 - a, a = floor((1 - level)/2 (n + 1)), hold a new exchangeable draw (data
    under the null) with probability exactly (n + 1 - 2a) / (n + 1) >= level (91/101 at n = 100).
    With fewer draws it is the Gaussian prediction interval mean +- t_{n-1} sd sqrt(1 + 1/n), whose
    coverage is ``level`` when the column is Gaussian across draws (top-k energies are close to it:
    tests/test_nulls.py measures it).

    Returns
    -------
    median, lo, hi : ndarray, shape (d,)
    coverage : float
        What the band holds (0 for a single draw: no band).
    method : str
    """
    n = a.shape[0]
    med = np.median(a, axis=0)
    j = int(np.floor((1.0 - level) / 2.0 * (n + 1) + 1e-9))  # 0.05 * 20 is 0.999.. in floats
    if j >= 1:
        s = np.sort(a, axis=0)
        cov = (n + 1 - 2 * j) / (n + 1)
        return med, s[j - 1], s[n - j], float(cov), f"order statistics {j} and {n + 1 - j} of {n} draws"
    if n >= 2:
        t = float(scipy.stats.t.ppf(0.5 + level / 2.0, n - 1))
        half = t * a.std(axis=0, ddof=1) * np.sqrt(1.0 + 1.0 / n)
        mean = a.mean(axis=0)
        return med, np.clip(mean - half, 0.0, None), mean + half, float(level), f"t prediction interval from {n} draws"
    return med, a[0].copy(), a[0].copy(), 0.0, "one draw: no band"


def null_band(spec: NullSpec, draws: int = 100, seed: int = 0, k_fitted: int = 0,
              progress: ProgressFn | None = None) -> NullBand:
    """The null's median and band of its EVR and cumulative EVR curves, within the draw budget.

    ``k_fitted`` > 0 (at sides <= :data:`FITTED_SIDE`, where the eigenvectors are cheap) also keeps
    each draw's mean per-model in-sample captured energy at k = 1..k_fitted: the like-for-like
    companion of the fitted coverage curve (a mean over models, not a share of pooled energy).
    ``progress`` hears of each costly draw (seconds each at side 4096).
    """
    made = affordable_draws(spec, draws)
    k_fitted = k_fitted if spec.d <= FITTED_SIDE and not (spec.factored and spec.center != "none") else 0
    if not k_fitted:
        return band_from_eigenvalues(null_eigenvalues(spec, made, seed, progress=progress), mp_edge_evr(spec),
                                     spec.construction, draws)
    eig, fitted = null_eigenvalues(spec, made, seed, k_fitted=k_fitted, progress=progress)
    band = band_from_eigenvalues(eig, mp_edge_evr(spec), spec.construction, draws)
    band.fitted_draws = fitted
    return band


def band_from_eigenvalues(eig: np.ndarray, mp_edge_value: float, construction: str, asked: int | None = None) -> NullBand:
    """Summarise null eigenvalues (draws x d, descending) into a :class:`NullBand`."""
    tot = eig.sum(axis=1, keepdims=True)
    evr = np.divide(eig, tot, out=np.zeros_like(eig), where=tot > 0)
    cum = np.cumsum(evr, axis=1)
    em, el, eh, cov, how = band_limits(evr)
    cm, cl, ch, _, _ = band_limits(cum)
    n = int(eig.shape[0])
    return NullBand(em, el, eh, np.minimum(cm, 1.0), cl, np.minimum(ch, 1.0), float(mp_edge_value), n,
                    int(asked if asked is not None else n), float(cov), how, construction,
                    cum[:, :KEEP_COMPONENTS].copy())


def model_null_band(centered: np.ndarray, mn: int, center: bool, draws: int = 100, seed: int = 0) -> NullBand:
    """Null band of the model-mode kernel K_ij = <Z_i, Z_j> for Gaussian Z_i with mn entries each.

    With Z_i = sigma_i X_i (X_i standard), K = D X X^T D for D = diag(sigma) and
    X X^T ~ W_N(mn, I): one N x N Bartlett sample per draw, never an mn-long vector.  Without
    centring each model is rescaled to exactly its norm; with it, the strengths come from the
    centred norms (:func:`explorer.metrics.null_spec.raw_energies`) and J = I - 11^T/N is applied
    on both sides, as the data's kernel is double-centred.
    """
    energies = raw_energies(np.asarray(centered, dtype=np.float64), "model" if center else "none",
                            np.full(len(centered), int(mn)))
    n = len(energies)
    made = int(min(draws, max(MIN_DRAWS, NULL_FLOPS // max(1.0, 2.0 * n**3))))
    if draws < 1:
        raise OptionError(f"null draws must be >= 1, got {draws}")
    sig = np.sqrt(energies / mn)
    j = np.eye(n) - 1.0 / n
    eig = np.empty((made, n))
    for t in range(made):
        rng = np.random.default_rng([seed, t])
        w = bartlett(n, int(mn), rng)
        if not center:
            dg = np.sqrt(np.clip(np.diag(w), 1e-300, None))
            w = w / dg[:, None] / dg[None, :] * mn               # unit norms exactly, then D's
        k = sig[:, None] * w * sig[None, :]
        if center:
            k = j @ k @ j
        eig[t] = np.clip(np.linalg.eigvalsh(k)[::-1], 0.0, None)
    pop = np.linalg.eigvalsh(j @ np.diag(sig**2) @ j) if center else sig**2
    pop = np.clip(pop, 0.0, None)
    total = float(mn * pop.sum())
    edge = mp_edge(pop, np.ones(n, dtype=np.int64), int(mn)) / total if total > 0 else float("nan")
    how = ("each model its own Gaussian, strength from its centred norm, drawn raw and centred on the mean model"
           if center else "each model its own Gaussian of exactly its norm")
    return band_from_eigenvalues(eig, min(1.0, edge), f"Gaussian null: {how} ({n} models, {mn} entries)", draws)


def random_subspace_expectation(dim: int, ks: np.ndarray | int) -> np.ndarray:
    """Energy (and overlap) a uniformly random k-dim subspace of R^dim captures in expectation: k/dim.

    Parameters
    ----------
    dim : int
    ks : int or ndarray of int

    Returns
    -------
    ndarray, same shape as ``ks``
    """
    if dim < 1:
        raise OptionError(f"dimension must be >= 1, got {dim}")
    return np.minimum(np.asarray(ks, dtype=float) / dim, 1.0)
