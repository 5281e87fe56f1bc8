"""What the strength-matched Gaussian null of one layer group must match (DESIGN.md, "Baselines").

The null hypothesis, for N side matrices X_i (d x e, the side whose Gram is decomposed):

    H0:  X_i = M + sigma_i G_i,   G_i iid standard Gaussian (LoRA products: G_i = B_i A_i with
         Gaussian factors of the model's rank), M a mean the centering removes exactly
         (M = 0 for centering ``none``; M = c 1^T, one shared column, for ``vector``).

Each model keeps its own strength sigma_i, at every layer size: nothing is pooled.  The data's
centring removes M exactly, so the null is drawn raw (M = 0) and centred the same way, which makes
it independent of model order.  The strengths are estimated from the norms the analysis measured,
**after** centring (c_i = ||X_i - Z||^2), by the method of moments that is exact in expectation
under H0 (:func:`raw_energies`); without centring the null is *norm-exact*: every drawn model is
rescaled to exactly the data's norm, which for Gaussian data is the exact law given the norms.

Without centring a draw is a sum of independent Wisharts, one per model (w_i = E_i / (d e_i),
f_i = e_i, its rank for padded LoRA factors; the Bartlett factor stands in for a wide model).
With centring each draw makes every model raw, centres them as the data was centred, and
rescales each centred model to exactly its measured centred norm (the same conditioning on the
norms; without it the band over-covers: 96 % instead of 90 % for top-4 energies in
tests/test_nulls.py).  The Marchenko-Pastur edge uses the equivalent Wishart terms: the
eigenvalues of D J D (D = diag(sigma), J = I - 11^T/N) with e dof each for ``model``; the
columns' variances (e - 1 dof per model) and the eigenvalues of diag(sigma^2) - sigma sigma^T / N
for ``vector``.  LoRA products (view dW) are sigma_i B_i A_i with Gaussian factors of each
adapter's rank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize

from explorer.core.errors import OptionError


@dataclass(frozen=True)
class NullSpec:
    """What one layer group's null draws (module docstring).

    Parameters
    ----------
    d, e : int
        Side of the Gram being decomposed, and the other side.
    weights : ndarray, shape (T,)
        Variance of one entry of each null model (of its Gaussian, or its factors' product),
        sorted ascending with ``dof`` and ``targets`` (so draws do not depend on model order).
    dof : ndarray of int, shape (T,)
        Columns of each null model: e (its rank for zero-padded factors), or its LoRA rank.
    targets : ndarray, shape (T,)
        Each drawn model is rescaled to exactly this norm^2, after the centring.
    factored : bool
        Null models are LoRA products sigma B A, B (d x dof), A (dof x e).
    center : {"none", "model", "vector"}
    mp_weights, mp_dof : ndarray
        Wishart terms whose sum has the centred null's law in the Gaussian case, for the edge.
    construction : str
        One sentence saying how the null was built, shown next to every band.
    """

    d: int
    e: int
    weights: np.ndarray
    dof: np.ndarray
    targets: np.ndarray
    factored: bool
    center: str
    mp_weights: np.ndarray
    mp_dof: np.ndarray
    construction: str = ""

    @property
    def width(self) -> int:
        """Columns of one draw's factor Y (Gram Y Y^T, d x width)."""
        if self.center != "none" and not self.factored:
            return int(len(self.dof) * self.e)          # the models themselves, to centre them
        return int(np.minimum(self.dof, min(self.d, self.e) if self.factored else self.d).sum())

    def flops_per_draw(self) -> float:
        """Floating-point operations of one draw (Gram product and eigenvalues), for the draw budget."""
        d, w = float(self.d), float(self.width)
        side = min(d, w) if self.center == "none" else d
        cost = 2.0 * d * w * side + 4.0 / 3.0 * side**3
        if self.factored and self.center != "none":
            # The mean product (d x e), each factor against it, and its Gram, each draw.
            cost += 4.0 * d * float(self.dof.sum()) * self.e + 2.0 * d * d * self.e
        return cost


def raw_energies(centered: np.ndarray, center: str, widths: np.ndarray) -> np.ndarray:
    """Each model's energy E_i = sigma_i^2 E||G_i||^2 under H0, from its norm after centring.

    For ``model`` centring E||X_i - mean||^2 = E_i (1 - 2/N) + T/N^2 with T = sum_j E_j, so
    T = sum_i c_i / (1 - 1/N) and E_i = (c_i - T/N^2) / (1 - 2/N).  For ``vector`` the units are
    the Q = sum_i e_i columns: c_i = E_i (1 - 2/Q) + e_i T/Q^2.  With N = 2 model centring leaves
    only the sum identifiable (both centred models are the same matrix up to sign) and the law of
    the centred Gram depends on nothing else, so the sum is split equally.  Negative estimates
    (a model quieter than the noise of the mean) are set to 0.

    Parameters
    ----------
    centered : ndarray, shape (N,)
        ||X_i - Z||^2, Z the data's centring (raw norms for ``none``).
    center : {"none", "model", "vector"}
    widths : ndarray of int, shape (N,)
        Columns e_i of each model (its rank for padded LoRA factors).

    Returns
    -------
    ndarray, shape (N,)
    """
    c = np.asarray(centered, dtype=np.float64)
    n = len(c)
    if center == "none" or n == 0:
        return c.copy()
    if center == "model":
        if n == 1:
            return np.zeros(1)
        total = c.sum() / (1.0 - 1.0 / n)
        if n == 2:
            return np.full(2, total / 2.0)
        return np.clip((c - total / n**2) / (1.0 - 2.0 / n), 0.0, None)
    if center == "vector":
        w = np.asarray(widths, dtype=np.float64)
        q = float(w.sum())
        if q <= 2:
            return np.full(n, c.sum() / max(n, 1))
        total = c.sum() / (1.0 - 1.0 / q)
        return np.clip((c - w * total / q**2) / (1.0 - 2.0 / q), 0.0, None)
    raise OptionError(f"center must be 'none', 'model' or 'vector', got {center!r}")


def _terms(weights: np.ndarray, dof: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wishart terms with zero weight or dof dropped (they add nothing)."""
    w, f = np.asarray(weights, dtype=np.float64), np.asarray(dof, dtype=np.int64)
    keep = (f > 0) & (w > 0)
    return w[keep], f[keep]


def _mp_terms(sig2: np.ndarray, widths: np.ndarray, e: int, center: str) -> tuple[np.ndarray, np.ndarray]:
    """The Wishart terms of the centred Gaussian null (module docstring), for its edge."""
    n = len(sig2)
    s = np.sqrt(sig2)
    if center == "none" or n == 0:
        return _terms(sig2, widths)
    if center == "model":
        dj = s[:, None] * (np.eye(n) - 1.0 / n) * s[None, :]
        return _terms(np.clip(np.linalg.eigvalsh(dj), 0.0, None), np.full(n, int(e)))
    m = np.diag(sig2) - np.outer(s, s) / n
    mw = np.clip(np.linalg.eigvalsh(m), 0.0, None)
    return _terms(np.concatenate([sig2, mw]), np.concatenate([widths - 1, np.ones(n, dtype=np.int64)]))


def _spec(targets, sig2, widths, d, e, factored, center, how) -> NullSpec:
    keep = (widths > 0) & (sig2 > 0)
    order = np.lexsort((targets[keep], widths[keep], sig2[keep]))
    mw, mf = _mp_terms(sig2 * (e if factored else 1), widths, e, center)
    return NullSpec(int(d), int(e), sig2[keep][order], widths[keep][order], targets[keep][order], factored, center,
                    mw, mf, f"Gaussian null: {how} ({len(targets)} models, {d} x {e})")


def dense_null_spec(centered: np.ndarray, d: int, e: int, center: str = "none",
                    widths: np.ndarray | None = None) -> NullSpec:
    """Null of N Gaussian d x e side matrices (dense models, and LoRA factors in views A and B).

    Parameters
    ----------
    centered : ndarray, shape (N,)
        The models' norms^2 after the data's centring.
    d, e : int
        Gram side and the other side.
    center : {"none", "model", "vector"}
    widths : ndarray of int, shape (N,), optional
        True columns of each model when factors of mixed rank were zero-padded to ``e``
        (centring ``none`` only: the padded views refuse the others).
    """
    c = np.asarray(centered, dtype=np.float64)
    n = len(c)
    wid = np.full(n, int(e)) if widths is None else np.asarray(widths, dtype=np.int64)
    if center != "none" and np.any(wid != e):
        raise OptionError("a null of zero-padded factors of mixed rank is defined for centring 'none' only")
    energies = raw_energies(c, center, wid)
    sig2 = np.divide(energies, d * wid, out=np.zeros(n), where=wid > 0)
    how = {"none": "each model its own Gaussian of the same shape and exactly its norm",
           "model": "each model its own Gaussian, drawn raw, centred on the mean model and rescaled to its centred norm",
           "vector": "each model its own Gaussian, drawn raw, centred on the mean column and rescaled to its centred norm"}
    return _spec(c, sig2, wid, d, e, False, center, how[center])


def factored_null_spec(centered: np.ndarray, d: int, e: int, ranks: np.ndarray, center: str = "none") -> NullSpec:
    """Null of N LoRA products s_i B_i A_i (d x e: Gram side x other side) with ranks ``ranks``.

    Each null model is sigma_i B A with B (d x r_i), A (r_i x e) standard Gaussian, so
    E||sigma_i B A||^2 = sigma_i^2 d r_i e; the draws form the products' Gram exactly (the
    r x r matrix A A^T is a Wishart of its own, not a multiple of I).
    """
    c = np.asarray(centered, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.int64)
    n = len(ranks)
    energies = raw_energies(c, center, np.full(n, int(e)))
    sig2 = np.divide(energies, float(d) * ranks * e, out=np.zeros(n), where=ranks > 0)
    how = {"none": "each adapter Gaussian factors of its rank, the product rescaled to exactly its norm",
           "model": "each adapter Gaussian factors of its rank, centred on the mean product and rescaled to its centred norm",
           "vector": "each adapter Gaussian factors of its rank, centred on the mean column and rescaled to its centred norm"}
    return _spec(c, sig2, ranks, d, e, True, center, how[center])


def mp_edge(weights: np.ndarray, dof: np.ndarray, samples: int) -> float:
    """Upper edge of the spectrum of sum_t w_t W(f_t, I), from the Marchenko-Pastur-Silverstein law.

    The nonzero eigenvalues of Y Y^T, Y = X D (X standard, ``samples`` rows, columns weighted by
    D^2 = the w_t repeated f_t times) are those of a sample covariance with population D^2:
    Silverstein's inverse Stieltjes transform x(u) = 1/u + (1/s) sum_t f_t w_t / (1 - w_t u) is
    convex on (0, 1/max w), and its minimum, times s, is the edge.  Equal weights give the
    Marchenko-Pastur edge w (sqrt(s) + sqrt(q))^2, q = sum f_t.  Exact as s, q -> infinity; loud
    single models (spikes) may sit above it, which the drawn band shows.

    Returns
    -------
    float
        The edge in eigenvalue units (0 for an empty spectrum).
    """
    w, f = _terms(weights, dof)
    if len(w) == 0 or samples < 1:
        return 0.0
    s = float(samples)
    top = float(w.max())

    def slope(u: float) -> float:  # x'(u)
        return -1.0 / u**2 + float((f * w**2 / (1.0 - w * u) ** 2).sum()) / s

    lo, hi = 1e-12 / top, (1.0 - 1e-12) / top
    u = scipy.optimize.brentq(slope, lo, hi, xtol=1e-14 / top, maxiter=500) if slope(lo) < 0 < slope(hi) else hi
    return float(s * (1.0 / u + float((f * w / (1.0 - w * u)).sum()) / s))


def mp_edge_evr(spec: NullSpec) -> float:
    """The null's Marchenko-Pastur edge as a fraction of its expected total energy.

    Gaussian terms: ``samples`` = d and trace E = d sum_t f_t w_t.  LoRA products: each adds about
    r_i degrees of freedom of variance sigma_i^2 e (A A^T ~ e I), the equal-Gram approximation.
    """
    w, f = spec.mp_weights, spec.mp_dof
    total = float(spec.d * (f * w).sum())
    return float(min(1.0, mp_edge(w, f, spec.d) / total)) if total > 0 else float("nan")
