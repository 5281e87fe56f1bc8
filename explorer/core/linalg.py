"""The numerical kernels every stage shares, each written once.

* :func:`sign_fix` — deterministic eigenvector signs (largest-magnitude entry positive);
* :func:`eigh_desc`, :func:`eigh_top`, :func:`eigvalsh_desc` — symmetric eigen-decompositions,
  descending, with one rule (:func:`partial_eigh`) for when only the top-k vectors are computed;
* :func:`center_matrix`, :func:`centered_gram`, :func:`double_center` — the three centerings of
  DESIGN.md applied to Gram sums (out/in mode) and to the model kernel (model mode);
* :func:`k_at`, :func:`k_table` — k(tau), the smallest k whose cumulative EVR reaches tau;
* :func:`psd_sqrt` — a small square root, for thin factors F with F F^T = X X^T.

Everything here is stateless and shape-documented; callers above decide *what* to decompose.
"""
from __future__ import annotations

import functools
from typing import Sequence, TypeVar

import numpy as np
import scipy.linalg
import torch

from explorer.core.errors import OptionError
from explorer.core.timing import stage
from explorer.core.tridiag import eigh_tridiagonal_top

Array = TypeVar("Array", torch.Tensor, np.ndarray)

# Standard k(tau) thresholds shown in tables and the JSON.
TAUS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
# Below this side a full eigh is fast enough that the partial (tridiagonal + k vectors) path does not pay.
PARTIAL_EIGH_MIN = 1024
# The partial path pays when at most this share of the eigenvectors is kept (d / 4).
PARTIAL_EIGH_SHARE = 4


def sign_fix(vecs: Array) -> Array:
    """Make each column's largest-magnitude entry positive, so results are deterministic.

    Parameters
    ----------
    vecs : Tensor or ndarray, shape (d, k)

    Returns
    -------
    Tensor or ndarray, shape (d, k)
        Same type, dtype and device as ``vecs``.
    """
    if vecs.shape[1] == 0:
        return vecs
    if isinstance(vecs, np.ndarray):
        idx = np.abs(vecs).argmax(axis=0)
        signs = np.sign(vecs[idx, np.arange(vecs.shape[1])])
        signs[signs == 0] = 1
        return vecs * signs
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1], device=vecs.device)])
    signs[signs == 0] = 1
    return vecs * signs


def symmetrize(a: Array) -> Array:
    """(A + A^T) / 2: removes the accumulation rounding that makes a Gram slightly asymmetric."""
    return 0.5 * (a + a.T)


def partial_eigh(d: int, k: int, device_type: str = "cpu") -> bool:
    """Whether the top-k eigenvectors of a d x d matrix come from LAPACK's index-subset driver.

    A full eigh spends most of its time on the d eigenvectors, of which only k are kept; one
    tridiagonalization with MRRR on an index subset (:mod:`explorer.core.tridiag`) gives every
    eigenvalue and the k vectors at d = 4096, k = 256 in 7.8 s (float64) against a full eigh's
    17 s, and agrees with it to round-off.  Only on the CPU (on a GPU torch's eigh is used).
    """
    return device_type == "cpu" and d >= PARTIAL_EIGH_MIN and 0 < k <= d // PARTIAL_EIGH_SHARE


def _top_cpu(gram: torch.Tensor, k: int, all_values: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (all, or the top k) and the top-k eigenvectors, descending, float64, by one
    tridiagonalization in the Gram's own precision (:mod:`explorer.core.tridiag`)."""
    a = gram.numpy() if gram.dtype in (torch.float32, torch.float64) else gram.double().numpy()
    # ``gram`` is the caller's symmetrized copy, so the solver may overwrite it.
    return eigh_tridiagonal_top(a, k, all_values)


def _timed_eigen(fn):
    """Charge a call to the ``eigen`` stage (:mod:`explorer.core.timing`)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with stage("eigen"):
            return fn(*args, **kwargs)
    return wrapped


@_timed_eigen
def eigh_desc(gram: torch.Tensor, k_store: int) -> tuple[np.ndarray, np.ndarray]:
    """All eigenvalues (descending) and the top-k sign-fixed eigenvectors of a symmetric PSD Gram.

    Parameters
    ----------
    gram : Tensor, shape (d, d)
    k_store : int

    Returns
    -------
    eigenvalues : ndarray, shape (d,)
        float64, clipped at 0 (tiny negative values are rounding).
    basis : ndarray, shape (d, min(k_store, d))
        float64.
    """
    gram = symmetrize(gram)
    d = gram.shape[0]
    k = min(k_store, d)
    if partial_eigh(d, k, gram.device.type):
        vals, top = _top_cpu(gram, k, all_values=True)
        return np.clip(vals, 0.0, None), sign_fix(top)
    vals, vecs = torch.linalg.eigh(gram)
    vals = torch.flip(vals, dims=[0]).clamp_min(0)
    vecs = sign_fix(torch.flip(vecs[:, -k:] if k else vecs[:, :0], dims=[1]))
    return vals.cpu().double().numpy(), vecs.cpu().double().numpy()


@_timed_eigen
def eigh_top(gram: torch.Tensor, k: int) -> tuple[np.ndarray, torch.Tensor]:
    """The top-``k`` eigenvalues and sign-fixed eigenvectors of a symmetric PSD Gram.

    Parameters
    ----------
    gram : Tensor, shape (d, d)
    k : int

    Returns
    -------
    eigenvalues : ndarray, shape (min(k, d),)
        Descending, float64, clipped at 0.
    basis : Tensor, shape (d, min(k, d))
        Same device and dtype as ``gram``.
    """
    gram = symmetrize(gram)
    d = gram.shape[0]
    kk = min(k, d)
    if partial_eigh(d, kk, gram.device.type):
        vals, vecs = _top_cpu(gram, kk, all_values=False)
        vecs_t = torch.from_numpy(vecs).to(gram.dtype)
    else:
        vals_t, vecs_t = torch.linalg.eigh(gram)
        vals = torch.flip(vals_t, dims=[0])[:kk].cpu().double().numpy()
        vecs_t = torch.flip(vecs_t, dims=[1])[:, :kk]
    return np.clip(vals, 0.0, None), sign_fix(vecs_t)


def eigh_np(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenpairs of a small symmetric float64 matrix, descending, vectors sign-fixed.

    Parameters
    ----------
    a : ndarray, shape (N, N)

    Returns
    -------
    eigenvalues : ndarray, shape (N,)
        Clipped at 0.
    vectors : ndarray, shape (N, N)
    """
    vals, vecs = np.linalg.eigh(symmetrize(np.asarray(a, dtype=np.float64)))
    return np.clip(vals[::-1], 0.0, None), sign_fix(np.ascontiguousarray(vecs[:, ::-1]))


@_timed_eigen
def eigvalsh_desc(gram: np.ndarray) -> np.ndarray:
    """Descending eigenvalues of a symmetric float64 matrix, clipped at 0 (MRRR driver, values only).

    Parameters
    ----------
    gram : ndarray, shape (d, d)

    Returns
    -------
    ndarray, shape (d,)
    """
    return np.clip(scipy.linalg.eigvalsh(gram, driver="evr", check_finite=False)[::-1], 0.0, None)


def psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """A square root T (r x r) with T T^T = m, for a small symmetric PSD m (negatives clipped).

    Parameters
    ----------
    m : Tensor, shape (r, r)

    Returns
    -------
    Tensor, shape (r, r)
    """
    if m.device.type == "cpu":
        # numpy's LAPACK call is microseconds for r x r; torch's dispatch costs far more per call.
        vals, vecs = np.linalg.eigh(symmetrize(m).double().numpy())
        return torch.from_numpy(vecs * np.sqrt(np.clip(vals, 0.0, None))).to(m.dtype)
    vals, vecs = torch.linalg.eigh(symmetrize(m))
    return vecs * vals.clamp_min(0).sqrt()


# --------------------------------------------------------------------------- centering
CENTERS: tuple[str, ...] = ("none", "model", "vector")


def check_center(center: str) -> str:
    """Return ``center`` if it is one of :data:`CENTERS`, else raise :class:`OptionError`."""
    if center not in CENTERS:
        raise OptionError(f"center {center!r} is not one of {', '.join(CENTERS)}")
    return center


def center_matrix(s: torch.Tensor, n: int, center: str) -> torch.Tensor | None:
    """The matrix Z subtracted from every side matrix X_i (d x e), from their sum ``s`` over ``n``.

    ``model``: Z = S / N (the mean model); ``vector``: Z = c 1^T with c the mean column of the
    unfolding [X_1 ... X_N].  Returns None for ``none`` (or n = 0).

    Parameters
    ----------
    s : Tensor, shape (d, e)
    n : int
    center : {"none", "model", "vector"}

    Returns
    -------
    Tensor, shape (d, e), or None
    """
    check_center(center)
    if center == "none" or n <= 0:
        return None
    if center == "model":
        return s / n
    c = s.sum(dim=1, keepdim=True) / (n * s.shape[1])
    return c.expand_as(s)


def centered_gram(g: torch.Tensor, s: torch.Tensor, n: int, center: str) -> torch.Tensor:
    """sum_i (X_i - Z)(X_i - Z)^T from the raw Gram sum_i X_i X_i^T and the sum S = sum_i X_i.

    The general expansion G - Z S^T - S Z^T + N Z Z^T reduces, for the two centerings, to

        model:   G - S S^T / N
        vector:  G - N e c c^T,   c = S 1 / (N e)

    which is what is computed (a rank-e resp. rank-one correction, never a d x e x d product for
    the vector case).  Returns a new tensor; ``g`` is not modified.

    Parameters
    ----------
    g : Tensor, shape (d, d)
    s : Tensor, shape (d, e)
    n : int
    center : {"none", "model", "vector"}

    Returns
    -------
    Tensor, shape (d, d)
    """
    check_center(center)
    if center == "none" or n <= 0:
        return g.clone()
    if center == "model":
        return g - (s @ s.T) / n
    e = s.shape[1]
    c = s.sum(dim=1) / (n * e)
    return g - (n * e) * torch.outer(c, c)


def subtract_center(g: torch.Tensor, s: torch.Tensor, z: torch.Tensor, n: int) -> torch.Tensor:
    """sum_i (X_i - Z)(X_i - Z)^T = G - Z S^T - S Z^T + N Z Z^T for an arbitrary Z.

    For the side that was centred use :func:`centered_gram` (same value, cheaper); this general
    form serves the *other* side's Gram, where Z^T is not that side's mean column.

    Parameters
    ----------
    g : Tensor, shape (d, d)
        Raw Gram sum_i X_i X_i^T.
    s : Tensor, shape (d, e)
        sum_i X_i.
    z : Tensor, shape (d, e)
    n : int

    Returns
    -------
    Tensor, shape (d, d)
    """
    zs = z @ s.T
    return g - zs - zs.T + n * (z @ z.T)


def double_center(k: Array) -> Array:
    """J K J with J = I - 11^T / N: the model kernel of the mean-centred models.

    Computed as K - row means - column means + grand mean (O(N^2), no N^3 product).

    Parameters
    ----------
    k : Tensor or ndarray, shape (N, N)

    Returns
    -------
    Tensor or ndarray, shape (N, N)
    """
    if isinstance(k, np.ndarray):
        r, c = k.mean(axis=1, keepdims=True), k.mean(axis=0, keepdims=True)
        return k - r - c + k.mean()
    r, c = k.mean(dim=1, keepdim=True), k.mean(dim=0, keepdim=True)
    return k - r - c + k.mean()


# --------------------------------------------------------------------------- k(tau)
def k_at(cumulative: np.ndarray, tau: float) -> int:
    """Smallest k whose cumulative EVR reaches ``tau`` (in (0, 1]).

    On a truncated spectrum that never reaches ``tau`` this is its length, a lower bound.

    Parameters
    ----------
    cumulative : ndarray, shape (d,)
        Non-decreasing cumulative EVR.
    tau : float
    """
    if not 0 < tau <= 1:  # also refuses NaN
        raise OptionError(f"tau must lie in (0, 1], got {tau}")
    cum = np.asarray(cumulative, dtype=np.float64)
    # A tiny slack keeps tau=1 reachable despite rounding in the cumulative sum.
    return int(min(np.searchsorted(cum, tau - 1e-12) + 1, len(cum)))


def k_table(cumulative: np.ndarray, taus: Sequence[float] = TAUS) -> dict[str, int]:
    """k(tau) for each tau, keyed ``"0.9"`` etc."""
    return {str(t): k_at(cumulative, t) for t in taus}
