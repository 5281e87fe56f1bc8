"""A verdict per layer group: shared beyond the null or not, held out or only fitted, more than the
mean or not, each with the baseline it beat or failed to beat (DESIGN.md, "Baselines").

The statistic is the top-k cumulative EVR (the share of the family's energy in its k strongest
shared directions), compared with the strength-matched Gaussian null's draws of the same statistic
(:class:`~explorer.metrics.results.NullBand`, ``cum_draws``):

* **p-value**: with n >= 19 draws the rank p = (1 + #{null >= observed}) / (n + 1), exact for
  exchangeable draws; beyond the largest draw (where the rank only bounds it by 1/(n + 1)) and
  with fewer draws, the t tail of the observation against the draws' mean and spread (as the
  band's t interval): an extrapolation, said so in the verdict's notes.
* **effect**: observed / null median, with the interval observed / (null's band limits), the
  range of effects the null's own spread allows at the band's coverage.
* **held out**: mean held-out (k-fold) captured energy at k over the in-sample one.
* **more than the mean**: without centring, held-out subspace captured energy over the held-out
  mean's (mean-only baseline); with centring the mean is removed before anything is measured.

Across many groups (the atlas) p-values are adjusted by Holm's step-down (:func:`holm`), which
controls the family-wise error rate.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.stats

from explorer.engine.options import Spectrum
from explorer.metrics.baselines import band_limits
from explorer.metrics.results import Metrics

# Significance level of "shared beyond the null" (after Holm's adjustment in an atlas).
ALPHA = 0.05
# Held-out over fitted coverage below which the subspace is "fitted, not held out".
HELD_OUT_MIN = 0.5
# Mean-only captured energy, as a share of the subspace's, above which it is "mostly the mean".
MEAN_SHARE_MAX = 0.8
# Smallest extrapolated p-value reported: a Gaussian tail read further out says nothing.
P_FLOOR = 1e-12


@dataclass(frozen=True)
class Verdict:
    """The judgement on one layer group (fields as in the atlas JSON, ``verdict``).

    Attributes
    ----------
    label : str
        ``shared``, ``shared, mostly the mean``, ``fitted, not held out``, ``null-like`` or
        ``undetermined``.
    k : int
        Rank of the top-k statistic.
    observed, null_median : float
        Top-k cumulative EVR of the data and the null's median.
    p_value : float
        Of the observation under the null (NaN when undetermined; see the module docstring),
        after the atlas's multiple-testing adjustment when there was one.
    effect : float
        observed / null_median.
    effect_ci : (float, float)
        observed / null band high, observed / null band low.
    heldout_ratio, mean_ratio : float
        Held-out over fitted coverage at k; subspace over mean-only coverage (NaN when not defined).
    summary : str
        The verdict in words, naming every baseline beaten or not.
    notes : list of str
    p_raw : float
        The p-value before any adjustment.
    """

    label: str
    k: int
    observed: float
    null_median: float
    p_value: float
    effect: float
    effect_ci: tuple[float, float]
    heldout_ratio: float
    mean_ratio: float
    summary: str
    notes: list[str] = field(default_factory=list)
    p_raw: float = float("nan")

    def to_json(self) -> dict:
        """JSON-ready dict (NaN written as None)."""
        out = asdict(self)
        for key, val in out.items():
            if isinstance(val, float) and not np.isfinite(val):
                out[key] = None
        out["effect_ci"] = [None if not np.isfinite(v) else float(v) for v in self.effect_ci]
        return out


def default_k(d: int) -> int:
    """Rank of the verdict's statistic: 16 (the LoRA literature's), at most a quarter of the side."""
    return int(max(1, min(16, d // 4)))


def p_value(observed: float, draws: np.ndarray) -> float:
    """P(null >= observed) from the null's draws (module docstring).

    With n >= 19 draws and the observation inside their range, the rank p-value (exact).  Beyond
    the largest draw the rank can only say p < 1/(n + 1), too coarse for a multiple-testing
    adjustment over many groups, so the tail is extrapolated by the t distribution of the draws
    (the null's top-k energy is close to Gaussian across draws: the t band's measured coverage,
    tests/test_nulls.py); the result is never above the rank bound, nor below :data:`P_FLOOR`.
    """
    draws = np.asarray(draws, dtype=np.float64)
    n = len(draws)
    sd = float(np.std(draws, ddof=1)) if n >= 2 else 0.0
    spread = sd > 1e-12 * abs(float(np.mean(draws)))
    tail = float("nan")
    if spread:
        t = (observed - float(np.mean(draws))) / (sd * np.sqrt(1.0 + 1.0 / n))
        tail = max(float(scipy.stats.t.sf(t, n - 1)), P_FLOOR)
    if n >= 19:
        exceed = int(np.count_nonzero(draws >= observed))
        rank = (1 + exceed) / (n + 1)
        return float(min(rank, tail)) if exceed == 0 and spread else float(rank)
    return tail  # NaN when the draws have no spread: no tail to read a p-value from


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error), NaN left as NaN.

    Parameters
    ----------
    p_values : ndarray, shape (G,)

    Returns
    -------
    ndarray, shape (G,)
        Adjusted p-values, in [0, 1], monotone in the raw ones.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def judge(spectrum: Spectrum, metrics: Metrics | None, k: int | None = None,
          p_adjusted: float | None = None, alpha: float = ALPHA) -> Verdict:
    """The verdict on one analysed layer group.

    Parameters
    ----------
    spectrum : Spectrum
    metrics : Metrics or None
    k : int, optional
        Rank of the statistic (default :func:`default_k` of the spectrum's side).
    p_adjusted : float, optional
        The p-value after a multiple-testing adjustment (the atlas's); the raw one otherwise.
    alpha : float
    """
    cum = np.asarray(spectrum.cumulative)
    k = int(min(k or default_k(len(cum)), len(cum)))
    nan = float("nan")
    notes: list[str] = []
    null = metrics.null if metrics is not None else None
    observed = float(cum[k - 1]) if len(cum) else nan
    if spectrum.total <= 0 or not np.isfinite(observed):
        notes.append("the family's energy is 0 (after centring): there is no spectrum to judge")
    elif null is None or null.cum_draws.shape[1] < k:
        notes.append("no Gaussian null was computed for this group (null draws 0)")
    elif k >= len(cum):
        notes.append(f"k = {k} is the whole side: the top-k energy is 1 for the data and the null alike")
    if notes:
        return Verdict("undetermined", k, observed, nan, nan, nan, (nan, nan), nan, nan,
                       "undetermined: " + notes[0], notes, nan)
    draws = null.cum_draws[:, k - 1]
    p = p_value(observed, draws)
    if len(draws) < 19 or observed > draws.max():
        notes.append(f"p-value from the t tail of {len(draws)} null draws (the observation lies beyond them)"
                     if len(draws) >= 19 else f"p-value from the t tail of {len(draws)} null draws")
    p_used = p if p_adjusted is None else float(p_adjusted)
    med, lo, hi, cov, _ = band_limits(draws[:, None])
    med, lo, hi = float(med[0]), float(lo[0]), float(hi[0])
    effect = observed / med if med > 0 else nan
    ci = (observed / hi if hi > 0 else nan, observed / lo if lo > 0 else nan)
    ho_ratio, mean_ratio = _heldout_ratios(metrics, k, spectrum.center, notes)
    adj = "" if p_adjusted is None else " after Holm's adjustment across groups"
    null_txt = (f"the strength-matched Gaussian null (top-{k} EVR {observed:.3g} vs {med:.3g}, "
                f"p = {p_used:.2g}{adj}, {null.draws} draws)")
    if not np.isfinite(p_used) or p_used > alpha:
        label, summary = "null-like", f"null-like: does not beat {null_txt}"
    else:
        parts = [f"beats {null_txt}, effect {effect:.3g}× [{ci[0]:.3g}, {ci[1]:.3g}]"]
        label = "shared"
        if np.isfinite(ho_ratio):
            if ho_ratio < HELD_OUT_MIN:
                label = "fitted, not held out"
                parts.append(f"but held-out models keep only {ho_ratio:.0%} of the fitted coverage")
            else:
                parts.append(f"held out ({ho_ratio:.0%} of the fitted coverage)")
        if np.isfinite(mean_ratio) and label == "shared":
            if 1.0 / mean_ratio >= MEAN_SHARE_MAX:
                label = "shared, mostly the mean"
                parts.append(f"but the mean alone captures {1.0 / mean_ratio:.0%} of what the subspace does")
            else:
                parts.append(f"beats the mean-only baseline ({mean_ratio:.3g}× its coverage)")
        elif spectrum.center != "none":
            parts.append(f"beyond the mean by construction (centring {spectrum.center!r})")
        summary = f"{label}: " + "; ".join(parts)
    notes.append(f"null band: {null.band_method}, holds {100 * cov:.0f} % of null top-{k} energies")
    return Verdict(label, k, observed, med, p_used, effect, ci, ho_ratio, mean_ratio, summary, notes, p)


def _heldout_ratios(metrics: Metrics, k: int, center: str, notes: list[str]) -> tuple[float, float]:
    """(held-out / fitted coverage, subspace / mean-only held-out coverage) at rank k."""
    nan = float("nan")
    ho = metrics.heldout
    if ho is None or ho.kfold is None or metrics.energy_one.shape[1] < k:
        notes.append("held-out coverage was not computed: the verdict cannot say whether the subspace is held out")
        return nan, nan
    held = float(np.nanmean(ho.kfold[:, k - 1]))
    fitted = float(np.nanmean(metrics.energy_one[:, k - 1]))
    ratio = held / fitted if fitted > 0 else nan
    mean_ratio = nan
    if center == "none" and ho.mean_kfold_captured is not None:
        mean_only = float(np.nanmean(ho.mean_kfold_captured))
        mean_ratio = held / mean_only if mean_only > 0 else float("inf")
    return ratio, mean_ratio
