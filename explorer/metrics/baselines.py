"""Baselines that decide whether a spectrum shows real shared structure (DESIGN.md, "Baselines").

* Strength-matched Gaussian null: every matrix replaced by iid Gaussian of the same shape and
  Frobenius norm (LoRA: Gaussian factors of the same rank and norms).  No null files are made: the
  Gram of a d x e standard Gaussian matrix is Wishart W_d(e, I), and a sum of Wisharts with one
  scale is again Wishart, so each draw samples a few d x d Wisharts by the Bartlett decomposition
  (O(d^3 / 3) each) instead of generating N matrices.
* Marchenko-Pastur edge of that null.
* Random-subspace expectation k/d.

Mean-only reconstruction of held-out models lives with the coverage code
(:mod:`explorer.metrics.heldout`), which has the fold means at hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import eigvalsh_desc
from explorer.engine.gram import StackedGram
from explorer.metrics.results import NullBand

# Budget (flops per draw) under which every model gets its own exactly-scaled Wishart; above it,
# models of similar norm share one Wishart per quantile bin (energy preserved exactly).
_EXACT_FLOPS = 2e10


@dataclass(frozen=True)
class NullSpec:
    """What the null of one layer group must match.

    Parameters
    ----------
    d : int
        Side of the Gram being decomposed (m in out-mode, n in in-mode, N in model mode).
    dof : ndarray, shape (N,)
        Degrees of freedom each model adds to the Gram: the other dimension of a dense matrix
        (n in out-mode), or the rank r of a LoRA factor.
    scale2 : ndarray, shape (N,)
        Per-model variance of one Gram column, chosen so the model's expected Gram trace equals its
        energy: ``energy_i / (d * dof_i)``.
    dof_removed : int
        Degrees of freedom that centering removes (e.g. one model's worth for ``center=model``).
    """

    d: int
    dof: np.ndarray
    scale2: np.ndarray
    dof_removed: int = 0


def dense_null_spec(energies: np.ndarray, d: int, e: int, dof_removed: int = 0) -> NullSpec:
    """Null of N dense d x e matrices with Frobenius norms^2 ``energies`` (shape (N,))."""
    energies = np.asarray(energies, dtype=np.float64)
    dof = np.full(len(energies), int(e))
    return NullSpec(int(d), dof, energies / (d * e), int(dof_removed))


def factored_null_spec(energies: np.ndarray, d: int, ranks: np.ndarray, dof_removed: int = 0) -> NullSpec:
    """Null of N LoRA products with ranks ``ranks`` and ||dW_i||^2 = ``energies`` on side ``d``.

    With Gaussian factors B (d x r) and A (r x e), A A^T is close to a multiple of I_r, so each
    model adds about r degrees of freedom to the Gram.
    """
    energies = np.asarray(energies, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.int64)
    return NullSpec(int(d), ranks, energies / (d * ranks), int(dof_removed))


def _bartlett(d: int, dof: int, rng: np.random.Generator) -> np.ndarray:
    """A sample of W_d(dof, I): the Gram of a d x dof standard Gaussian matrix, shape (d, d)."""
    f = _wishart_factor(d, dof, rng)
    return f @ f.T


def _wishart_factor(d: int, dof: int, rng: np.random.Generator) -> np.ndarray:
    """F with F F^T ~ W_d(dof, I): the Gaussian matrix itself (d x dof) when dof < d, else the
    Bartlett factor (d x d lower-triangular, L_jj^2 ~ chi^2(dof - j), below-diagonal N(0, 1))."""
    if dof < d:
        return rng.standard_normal((d, dof))
    low = np.tril(rng.standard_normal((d, d)), -1)
    low[np.diag_indices(d)] = np.sqrt(rng.chisquare(dof - np.arange(d)))
    return low


def _bins(spec: NullSpec) -> tuple[list[tuple[int, float]], bool]:
    """Group models into (total dof, variance) Wishart terms within the flop budget.

    Returns the terms and whether every model kept its own term (no pooling).
    """
    n = len(spec.dof)
    cost_each = spec.d**2 * np.minimum(spec.dof, spec.d)
    exact = bool(cost_each.sum() <= _EXACT_FLOPS or n <= 1)
    if exact:
        terms = [(int(f), float(s)) for f, s in zip(spec.dof, spec.scale2)]
    else:
        n_bins = int(max(1, min(n, _EXACT_FLOPS // max(1, spec.d**3 // 3))))
        order = np.argsort(spec.scale2)
        terms = []
        for chunk in np.array_split(order, n_bins):
            if len(chunk) == 0:
                continue
            dof = int(spec.dof[chunk].sum())
            # Mean variance weighted by dof keeps the bin's expected energy exact.
            s2 = float((spec.scale2[chunk] * spec.dof[chunk]).sum() / dof)
            terms.append((dof, s2))
    # Centering removes degrees of freedom; take them from the largest term.
    if spec.dof_removed:
        j = int(np.argmax([t[0] for t in terms]))
        terms[j] = (max(1, terms[j][0] - spec.dof_removed), terms[j][1])
    return terms, exact


# Largest null Gram side eigendecomposed per draw (8 draws of 4096^3 are tens of seconds on CPU).
_MAX_NULL_SIDE = 4096


def null_affordable(spec: NullSpec) -> bool:
    """True when each draw's eigendecomposition is of a side <= 4096 (the thin Y^T Y counts)."""
    width = sum(min(int(f), spec.d) for f in spec.dof)
    return min(spec.d, width) <= _MAX_NULL_SIDE


def null_eigenvalues(spec: NullSpec, draws: int = 8, seed: int = 0) -> np.ndarray:
    """Eigenvalues of the null Gram for several seeded draws.

    Returns
    -------
    ndarray, shape (draws, d)
        Descending eigenvalues per draw.
    """
    if draws < 1:
        raise OptionError(f"null draws must be >= 1, got {draws}")
    terms, _ = _bins(spec)
    d = spec.d
    out = np.empty((draws, d))
    for t in range(draws):
        rng = np.random.default_rng([seed, t])
        if len(terms) == 1 and terms[0][0] >= d:
            # One Wishart term: its eigenvalues in O(d^2) from the tridiagonal model, same law.
            dof, s2 = terms[0]
            out[t] = laguerre_eigenvalues(d, dof, rng, trace=s2 * d * dof)
            continue
        blocks = []
        for dof, s2 in terms:
            f = _wishart_factor(d, dof, rng)
            # trace(F F^T) = ||F||^2: rescaling to the target trace makes each model's norm exact
            # (the Gram of X / ||X|| * norm), not just right in expectation.
            nf = float((f * f).sum())
            blocks.append(f * np.sqrt(s2 * d * dof / nf) if nf > 0 else f)
        width = sum(b.shape[1] for b in blocks)
        if width < d:
            # Thin: the nonzero spectrum of Y Y^T is that of the small Y^T Y.
            y = np.concatenate(blocks, axis=1)
            out[t] = 0.0
            out[t, :width] = eigvalsh_desc(y.T @ y)
            continue
        stack = StackedGram(d, torch.float64, torch.device("cpu"))
        for b in blocks:  # stacked, so each product is one large, compute-bound GEMM
            stack.add(torch.from_numpy(b))
        out[t] = eigvalsh_desc(stack.flush().numpy())
    return out


def laguerre_eigenvalues(d: int, dof: int, rng: np.random.Generator, trace: float | None = None) -> np.ndarray:
    """Eigenvalues of one draw of W_d(dof, I) (dof >= d), descending, in O(d^2) instead of O(d^3).

    Dumitriu & Edelman (2002), "Matrix models for beta ensembles": for beta = 1 the eigenvalues
    of a real Wishart W_d(dof, I) have the law of those of B B^T, B lower bidiagonal (d x d) with
    B_ii ~ chi(dof - i + 1) and B_{i+1, i} ~ chi(d - i), i = 1..d.  B B^T is tridiagonal, so the
    eigenvalues come from a tridiagonal solver; tests/test_nulls.py checks the law against
    Bartlett samples of the dense Gram.

    Parameters
    ----------
    d, dof : int
    rng : numpy Generator
    trace : float, optional
        Rescale the draw to this total (as :func:`null_eigenvalues` does for every term).

    Returns
    -------
    ndarray, shape (d,)
    """
    if dof < d:
        raise OptionError(f"the tridiagonal Wishart model needs dof >= d, got dof={dof}, d={d}")
    diag = np.sqrt(rng.chisquare(dof - np.arange(d)))           # B_ii, i = 0..d-1
    sub = np.sqrt(rng.chisquare(d - 1 - np.arange(d - 1)))      # B_{i+1,i}
    # T = B B^T: T_ii = B_ii^2 + B_{i,i-1}^2, T_{i,i+1} = B_ii B_{i+1,i}.
    main = diag**2
    main[1:] += sub**2
    vals = scipy.linalg.eigvalsh_tridiagonal(main, diag[:-1] * sub, lapack_driver="sterf", check_finite=False)
    vals = np.clip(vals[::-1], 0.0, None)
    if trace is not None:
        tot = float(main.sum())
        vals = vals * (trace / tot) if tot > 0 else vals
    return vals


def null_band(spec: NullSpec, draws: int = 8, seed: int = 0) -> NullBand:
    """Median and 5-95 % band of the null's EVR and cumulative EVR curves."""
    return band_from_eigenvalues(null_eigenvalues(spec, draws, seed), mp_edge_evr(spec), _bins(spec)[1])


def band_from_eigenvalues(eig: np.ndarray, mp_edge: float, exact: bool) -> NullBand:
    """Summarise null eigenvalues (draws x d, descending) into a :class:`NullBand`."""
    tot = eig.sum(axis=1, keepdims=True)
    evr = np.divide(eig, tot, out=np.zeros_like(eig), where=tot > 0)
    cum = np.cumsum(evr, axis=1)
    q = lambda a, p: np.quantile(a, p, axis=0)  # noqa: E731
    return NullBand(
        q(evr, 0.5), q(evr, 0.05), q(evr, 0.95), q(cum, 0.5), q(cum, 0.05), q(cum, 0.95),
        float(mp_edge), int(eig.shape[0]), bool(exact),
    )


def model_null_band(energies: np.ndarray, mn: int, center: bool, draws: int = 8, seed: int = 0) -> NullBand:
    """Null band of the model-mode kernel K_ij = <Z_i, Z_j> for Gaussian Z_i of norms^2 ``energies``.

    With Z_i = sigma_i X_i (X_i standard, mn entries), K = D X X^T D for D = diag(sigma) and
    X X^T ~ W_N(mn, I): one N x N Bartlett sample per draw, never an mn-long vector.
    ``center`` applies the centering matrix J = I - 11^T/N on both sides.
    """
    if draws < 1:
        raise OptionError(f"null draws must be >= 1, got {draws}")
    energies = np.asarray(energies, dtype=np.float64)
    n = len(energies)
    sig = np.sqrt(energies / mn)
    j = np.eye(n) - 1.0 / n
    eig = np.empty((draws, n))
    for t in range(draws):
        rng = np.random.default_rng([seed, t])
        k = sig[:, None] * _bartlett(n, int(mn), rng) * sig[None, :]
        if center:
            k = j @ k @ j
        eig[t] = eigvalsh_desc(k)
    spec = NullSpec(n, np.array([int(mn)]), np.array([1.0]), 1 if center else 0)
    return band_from_eigenvalues(eig, mp_edge_evr(spec), True)


def mp_edge_evr(spec: NullSpec) -> float:
    """Marchenko-Pastur upper edge of the null Gram, as a fraction of its total energy.

    The null Gram is Y Y^T for Y = [sigma_i X_i], a d x q matrix with q = sum_i dof_i columns of
    average variance s^2.  Its top eigenvalue sits near s^2 (sqrt(d) + sqrt(q))^2, and its
    trace is s^2 d q, so the edge in EVR units is (sqrt(d) + sqrt(q))^2 / (d q).  Exact as
    d, q -> infinity for equal norms; with unequal norms it is the equal-norm approximation.
    """
    q = float(max(1, int(spec.dof.sum()) - spec.dof_removed))
    d = float(spec.d)
    return float(min(1.0, (np.sqrt(d) + np.sqrt(q)) ** 2 / (d * q)))


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
