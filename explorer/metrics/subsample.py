"""How many models until the subspace stabilises, and how sure is the spectrum: subsampling.

* **k(tau) against N**: for N' = 5, 10, 20, 40, ... models drawn without replacement, the
  spectrum of the N' models' (centred) Gram: k(tau) and the overlap of their top-k basis with the
  whole family's.  Where k(tau) and the overlap level off, more models of this kind add nothing.
* **Confidence band of the scree and of k(tau)** by half-sampling: random halves of the family
  (without replacement), their EVR, cumulative EVR and k(tau), as deviations from the halves'
  median added to the bias-corrected full-family value 2 theta_N - median(theta_half) (the top
  EVR of a finite family is biased upward about as 1/N, a half twice as much: 0.215 for a
  population value of 0.183 at N = 30 in tests/test_subsample.py).  For statistics linear in the
  models a random half without replacement has exactly the variance of the full-family estimate
  (finite-population correction 1 - 1/2 times 2/N), so the band is a CI for them; the EVR and
  k(tau) are smooth and discrete functions of such sums, and their bands are approximate (the
  top EVR's band holds the population value in 0.75-1 of families there).  A naive bootstrap would
  duplicate models, and a duplicated model concentrates the spectrum (it counts twice in the
  Gram), so it overstates how shared the directions are.

Both need each model's Gram (N x d^2), so they run while those fit the memory budget.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from explorer.core.linalg import TAUS, centered_gram, eigh_desc, k_at
from explorer.metrics import angles
from explorer.metrics.moments import ModelMoments, as_moments
from explorer.metrics.results import Stability

# Subsamples drawn per size, and random halves for the band.
DRAWS_PER_SIZE = 10
HALVES = 40


def subsample_sizes(n: int) -> list[int]:
    """5, 10, 20, 40, ... below N, then N."""
    sizes, s = [], 5
    while s < n:
        sizes.append(s)
        s *= 2
    return sizes + [n]


def _spectrum(grams: torch.Tensor, sums: torch.Tensor, idx: np.ndarray, d: int, e: int, center: str,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and top-k basis of the Gram of the models ``idx``."""
    g = grams[idx].sum(dim=0).reshape(d, d)
    s = sums[idx].sum(dim=0).reshape(d, e)
    return eigh_desc(centered_gram(g, s, len(idx), center), k)


def stability(sides: ModelMoments | Sequence[torch.Tensor], center: str, k: int, n_components: int, seed: int = 0) -> Stability:
    """k(tau) against N and the half-sampling band of the scree (module docstring).

    Parameters
    ----------
    sides : sequence of Tensor, each (d, e)
        Each model's raw side matrix.
    center : {"none", "model", "vector"}
    k : int
        Dimension of the bases compared with the whole family's.
    n_components : int
        Components the band covers.
    """
    mom = as_moments(sides)
    n, d, e, grams, sums = len(mom), mom.d, mom.e, mom.grams, mom.sums
    rng = np.random.default_rng([seed, 11])
    k = int(min(k, d))
    full_eigenvalues, ref = _spectrum(grams, sums, np.arange(n), d, e, center, k)  # the band is centred on it
    sizes = subsample_sizes(n)
    k_tau = np.full((len(sizes), DRAWS_PER_SIZE), np.nan)
    overlap = np.full((len(sizes), DRAWS_PER_SIZE), np.nan)
    for si, size in enumerate(sizes):
        for r in range(1 if size == n else DRAWS_PER_SIZE):
            vals, basis = _spectrum(grams, sums, rng.choice(n, size, replace=False), d, e, center, k)
            tot = vals.sum()
            if tot > 0:
                k_tau[si, r] = k_at(np.cumsum(vals) / tot, 0.9)
                overlap[si, r] = angles.overlap(basis[:, :k], ref) if basis.shape[1] else np.nan
    nc = int(min(n_components, d))
    half = max(2, n // 2)
    evr = np.full((HALVES, nc), np.nan)
    ks = np.full((HALVES, len(TAUS)), np.nan)
    for r in range(HALVES if n >= 4 else 0):
        vals, _ = _spectrum(grams, sums, rng.choice(n, half, replace=False), d, e, center, 1)
        tot = vals.sum()
        if tot > 0:
            evr[r] = vals[:nc] / tot
            ks[r] = [k_at(np.cumsum(vals) / tot, t) for t in TAUS]
    full_evr = full_eigenvalues / full_eigenvalues.sum() if full_eigenvalues.sum() > 0 else np.zeros_like(full_eigenvalues)
    full_cum = np.cumsum(full_evr)
    full_k = np.array([k_at(full_cum, t) for t in TAUS], dtype=float)
    cum = np.cumsum(evr, axis=1)
    def band(draws: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Bias-corrected: a family's top EVR is biased upward about as 1/N, so halves are twice as
        # biased; 2 * full - median(halves) removes it, and the halves' spread is the estimate's.
        med = np.nanmedian(draws, axis=0)
        centre = 2.0 * full - med
        return centre + np.nanquantile(draws - med, 0.05, axis=0), centre + np.nanquantile(draws - med, 0.95, axis=0)

    if np.isfinite(evr).any():
        evr_lo, evr_hi = band(evr, full_evr[:nc])
        cum_lo, cum_hi = band(cum, full_cum[:nc])
        k_lo, k_hi = band(ks, full_k)
    else:
        evr_lo = evr_hi = full_evr[:nc].copy()
        cum_lo = cum_hi = full_cum[:nc].copy()
        k_lo = k_hi = full_k
    k_ci = np.stack([np.clip(np.floor(k_lo), 1, d), np.clip(np.ceil(k_hi), 1, d)], axis=1)
    return Stability(np.array(sizes), k_tau, overlap, k, np.clip(evr_lo, 0, 1), np.clip(evr_hi, 0, 1),
                     np.clip(cum_lo, 0, 1), np.clip(cum_hi, 0, 1), k_ci, np.array(TAUS, dtype=float), HALVES)
