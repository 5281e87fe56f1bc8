"""What a decomposition is asked for (:class:`SpectralOptions`) and what it returns (:class:`Spectrum`).

Both sit below every solver: options are frozen and hashable (they are part of the cache key), and
the result type is the same for the dense, thin, factored, model-mode and randomized paths.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from explorer.core.errors import OptionError
from explorer.core.linalg import CENTERS, k_at

Mode = Literal["out", "in", "model"]
Center = Literal["none", "model", "vector"]
MODES: tuple[str, ...] = ("out", "in", "model")
METHODS: tuple[str, ...] = ("auto", "exact", "randomized")
__all__ = ["CENTERS", "METHODS", "MODES", "SpectralOptions", "Spectrum"]


@dataclass(frozen=True)
class SpectralOptions:
    """How to decompose a layer group (frozen, hashable: part of the cache key).

    Parameters
    ----------
    mode : {"out", "in", "model"} or None
        None (the default) means "not chosen": the pipeline replaces it by the mode of the view
        being analysed (:func:`explorer.catalog.views.default_mode`: ``in`` for LoRA A, ``out``
        otherwise) before the cache key is made, so results and keys always hold a concrete
        mode.  The engine, which sees bare matrices and no view, reads None as ``out``
        (:meth:`resolved`).
    center : {"none", "model", "vector"}
        ``model`` subtracts the mean model; ``vector`` subtracts the mean column (out-mode) or
        mean row (in-mode) of the unfolding.  In model mode ``vector`` equals ``model``.
    dtype : {"float64", "float32"}
        Accumulation dtype.
    device : {"auto", "cpu", "cuda", "mps"}
    k_store : int
        How many leading basis vectors the result keeps (all eigenvalues are always kept on
        the exact path).
    method : {"auto", "exact", "randomized"}
        ``auto`` is exact unless the Gram side exceeds ``RANDOMIZED_THRESHOLD``.
    seed : int
        Seed of the randomized path's test matrix (results are deterministic given it).
    power_iters : int
        Subspace iterations of the randomized path (accuracy: see :mod:`explorer.engine.randomized`).
    oversample : int
        Extra columns of the randomized path's test matrix beyond ``k_store``.
    """

    mode: str | None = None
    center: str = "none"
    dtype: str = "float64"
    device: str = "auto"
    k_store: int = 256
    method: str = "auto"
    seed: int = 0
    power_iters: int = 3
    oversample: int = 16

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise OptionError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.center not in CENTERS:
            raise OptionError(f"center {self.center!r} is not one of {', '.join(CENTERS)}")
        if self.method not in METHODS:
            raise OptionError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("k_store",):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise OptionError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("power_iters", "oversample", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise OptionError(f"{name} must be an integer >= 0, got {v!r}")

    def resolved(self, default: str = "out") -> SpectralOptions:
        """These options with a concrete mode: ``default`` when none was chosen, else unchanged.

        Parameters
        ----------
        default : {"out", "in", "model"}
            The mode to use when ``mode`` is None (the view's default, for the pipeline).

        Returns
        -------
        SpectralOptions
            ``self`` when the mode is set, so an explicit mode always wins.
        """
        if self.mode is not None:
            return self
        if default not in MODES:
            raise OptionError(f"mode {default!r} is not one of {', '.join(MODES)}")
        return replace(self, mode=default)


@dataclass
class Spectrum:
    """Eigen-decomposition of one mode of one layer group.

    Attributes
    ----------
    eigenvalues : ndarray, shape (d,) or (k,)
        Descending, non-negative; the squared singular values of the (centered) unfolding.
        ``d`` is m (out), n (in) or N (model).  The randomized path keeps only the top k.
    basis : ndarray, shape (d, k)
        Orthonormal leading eigenvectors, sign-fixed (largest-magnitude entry positive).
        k = min(k_store, d), or fewer when the unfolding has fewer than d columns (the rest
        of the eigenvalues are then exactly zero and their eigenvectors arbitrary).
    mode, center : str
    n_models : int
    shape : tuple of int
        ``(m, n)`` of each matrix.
    trace : float or None
        Total energy when ``eigenvalues`` is truncated (randomized path); None otherwise.
    method : str
        ``exact``, ``thin`` (SVD of the unfolding), ``factored`` or ``randomized``.
    """

    eigenvalues: np.ndarray
    basis: np.ndarray
    mode: str
    center: str
    n_models: int
    shape: tuple[int, int]
    trace: float | None = None
    method: str = "exact"

    @property
    def total(self) -> float:
        """Total energy: trace of the Gram (= sum of squared Frobenius norms, after centering)."""
        return float(self.trace) if self.trace is not None else float(self.eigenvalues.sum())

    @property
    def evr(self) -> np.ndarray:
        """Explained variance ratio per component, shape (d,)."""
        t = self.total
        return self.eigenvalues / t if t > 0 else np.zeros_like(self.eigenvalues)

    @property
    def cumulative(self) -> np.ndarray:
        """Cumulative EVR, shape (d,)."""
        return np.cumsum(self.evr)

    def k_at(self, tau: float) -> int:
        """Smallest k whose cumulative EVR reaches ``tau`` (in (0, 1]).

        On a truncated (randomized) spectrum that never reaches ``tau`` this is its length,
        a lower bound.
        """
        return k_at(self.cumulative, tau)

    @property
    def singular_values(self) -> np.ndarray:
        return np.sqrt(self.eigenvalues)
