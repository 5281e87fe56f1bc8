"""The engine: joint spectral decomposition of a layer group by streaming Gram accumulation.

For N matrices W_i (m x n) the three modes are (DESIGN.md, "Definitions")::

    out-mode    G = sum_i W_i W_i^T      (m x m)  eigenvectors: shared output basis U
    in-mode     H = sum_i W_i^T W_i      (n x n)  eigenvectors: shared input basis V
    model-mode  K_ij = <W_i, W_j>_F      (N x N)  eigenvectors: model coordinates

Models are read one at a time; only the Gram, a few running sums and a small buffer are held,
so memory is O(d^2 + one model) for d = m or n, independent of N.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import numpy as np
import torch

from .backend import pick_device, pick_dtype
from .errors import InputError, OptionError

Mode = Literal["out", "in", "model"]
Center = Literal["none", "model", "vector"]
MODES: tuple[str, ...] = ("out", "in", "model")
CENTERS: tuple[str, ...] = ("none", "model", "vector")

# Multiplying one thin W_i into a big Gram at a time is memory-bound; stacking the columns of
# several models into one buffer before each product keeps the matmul compute-bound.
_BUFFER_WIDTH = 2048

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SpectralOptions:
    """How to decompose a layer group (frozen, hashable: part of the cache key).

    Parameters
    ----------
    mode : {"out", "in", "model"}
    center : {"none", "model", "vector"}
        ``model`` subtracts the mean model; ``vector`` subtracts the mean column (out-mode) or
        mean row (in-mode) of the unfolding.  In model mode ``vector`` equals ``model``.
    dtype : {"float64", "float32"}
        Accumulation dtype.
    device : {"auto", "cpu", "cuda", "mps"}
    k_store : int
        How many leading basis vectors the result keeps (all eigenvalues are always kept).
    """

    mode: str = "out"
    center: str = "none"
    dtype: str = "float64"
    device: str = "auto"
    k_store: int = 256

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.center not in CENTERS:
            raise OptionError(f"center {self.center!r} is not one of {', '.join(CENTERS)}")
        if not isinstance(self.k_store, int) or self.k_store < 1:
            raise OptionError(f"k_store must be an integer >= 1, got {self.k_store!r}")


@dataclass
class Spectrum:
    """Eigen-decomposition of one mode of one layer group.

    Attributes
    ----------
    eigenvalues : ndarray, shape (d,)
        Descending, non-negative; the squared singular values of the (centered) unfolding.
        ``d`` is m (out), n (in) or N (model).
    basis : ndarray, shape (d, k)
        Orthonormal leading eigenvectors, sign-fixed (largest-magnitude entry positive).
    mode, center : str
    n_models : int
    shape : tuple of int
        ``(m, n)`` of each matrix.
    """

    eigenvalues: np.ndarray
    basis: np.ndarray
    mode: str
    center: str
    n_models: int
    shape: tuple[int, int]
    extras: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Total energy: trace of the Gram (= sum of squared Frobenius norms, after centering)."""
        return float(self.eigenvalues.sum())

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
        """Smallest k whose cumulative EVR reaches ``tau`` (in (0, 1])."""
        if not 0 < tau <= 1:
            raise OptionError(f"tau must lie in (0, 1], got {tau}")
        cum = self.cumulative
        # A tiny slack keeps tau=1 reachable despite rounding in the cumulative sum.
        return int(min(np.searchsorted(cum, tau - 1e-12) + 1, len(cum)))

    @property
    def singular_values(self) -> np.ndarray:
        return np.sqrt(self.eigenvalues)


def _sign_fix(vecs: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry positive, so results are deterministic."""
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1], device=vecs.device)])
    signs[signs == 0] = 1
    return vecs * signs


def eigh_desc(gram: torch.Tensor, k_store: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decompose a symmetric PSD Gram; return descending eigenvalues and top-k vectors.

    Returns
    -------
    eigenvalues : ndarray, shape (d,)
        Clipped at 0 (tiny negative values are rounding).
    basis : ndarray, shape (d, min(k_store, d))
    """
    gram = 0.5 * (gram + gram.T)  # symmetrise away accumulation rounding
    vals, vecs = torch.linalg.eigh(gram)
    vals = torch.flip(vals, dims=[0]).clamp_min(0)
    k = min(k_store, vecs.shape[1])
    vecs = _sign_fix(torch.flip(vecs, dims=[1])[:, :k])
    return vals.cpu().double().numpy(), vecs.cpu().double().numpy()


class GramAccumulator:
    """Stream matrices in, one at a time; read out the (centered) Gram of one mode.

    Parameters
    ----------
    mode : {"out", "in"}
    shape : (m, n)
    dtype, device : torch dtype and device of the accumulation.
    """

    def __init__(self, mode: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device):
        if mode not in ("out", "in"):
            raise OptionError(f"GramAccumulator mode must be 'out' or 'in', got {mode!r}")
        self.mode, self.shape, self.dtype, self.device = mode, shape, dtype, device
        d = shape[0] if mode == "out" else shape[1]
        self.gram = torch.zeros(d, d, dtype=dtype, device=device)
        self.sum = torch.zeros(shape, dtype=dtype, device=device)  # sum_i W_i, for centering
        self.count = 0
        self._buf: list[torch.Tensor] = []
        self._buf_width = 0

    def add(self, w: torch.Tensor) -> None:
        """Add one matrix W (m x n)."""
        if tuple(w.shape) != self.shape:
            raise InputError(f"matrix of shape {tuple(w.shape)} does not match the group's {self.shape}")
        w = w.to(device=self.device, dtype=self.dtype)
        self.sum += w
        self.count += 1
        # out-mode: G += W W^T, i.e. the columns of W; in-mode: H += W^T W, i.e. the rows.
        piece = w if self.mode == "out" else w.T
        self._buf.append(piece)
        self._buf_width += piece.shape[1]
        if self._buf_width >= _BUFFER_WIDTH:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        block = torch.cat(self._buf, dim=1) if len(self._buf) > 1 else self._buf[0]
        self.gram.addmm_(block, block.T)
        self._buf, self._buf_width = [], 0

    def centered(self, center: str) -> torch.Tensor:
        """The Gram after centering (``none``, ``model`` or ``vector``), shape (d, d)."""
        self._flush()
        n = self.count
        if center == "none" or n == 0:
            return self.gram.clone()
        if center == "model":
            # sum_i (W_i - mu)(W_i - mu)^T = G - N mu mu^T, mu = S / N
            s = self.sum if self.mode == "out" else self.sum.T
            return self.gram - (s @ s.T) / n
        # vector: subtract the mean column (out) / mean row (in) of the unfolding.
        m, ncol = self.shape
        if self.mode == "out":
            c = self.sum.sum(dim=1) / (n * ncol)
            return self.gram - (n * ncol) * torch.outer(c, c)
        r = self.sum.sum(dim=0) / (n * m)
        return self.gram - (n * m) * torch.outer(r, r)


def decompose(
    matrices: Iterable[torch.Tensor],
    n_models: int,
    shape: tuple[int, int],
    options: SpectralOptions = SpectralOptions(),
    progress: ProgressFn | None = None,
) -> Spectrum:
    """Decompose N matrices of one layer group in one mode.

    Parameters
    ----------
    matrices : iterable of Tensor, each shape (m, n)
        Consumed once, one at a time (e.g. a generator that reads each model's file).
    n_models : int
        N, for progress reporting and checks.
    shape : (m, n)
    options : SpectralOptions
    progress : callable(done, total, label), optional
        Called once per model read.

    Returns
    -------
    Spectrum
    """
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    if options.mode == "model":
        gram = _model_gram(matrices, n_models, shape, dtype, device, progress)
        if options.center != "none":
            j = torch.eye(n_models, dtype=dtype, device=device) - 1.0 / n_models
            gram = j @ gram @ j
    else:
        acc = GramAccumulator(options.mode, shape, dtype, device)
        for i, w in enumerate(matrices):
            acc.add(w)
            if progress:
                progress(i + 1, n_models, "reading models")
        if acc.count != n_models:
            raise InputError(f"expected {n_models} models, read {acc.count}")
        gram = acc.centered(options.center)
    vals, vecs = eigh_desc(gram, options.k_store)
    return Spectrum(vals, vecs, options.mode, options.center, n_models, shape)


def _model_gram(matrices, n_models, shape, dtype, device, progress) -> torch.Tensor:
    """K_ij = <W_i, W_j>_F, accumulated one model at a time against those already read.

    Holds the flattened models read so far (N x mn); fine for the sizes the app handles in
    memory.  Row-sliced streaming for very large m*n is the engine issue's job.
    """
    rows: list[torch.Tensor] = []
    gram = torch.zeros(n_models, n_models, dtype=dtype, device=device)
    for i, w in enumerate(matrices):
        if tuple(w.shape) != shape:
            raise InputError(f"matrix of shape {tuple(w.shape)} does not match the group's {shape}")
        v = w.reshape(-1).to(device=device, dtype=dtype)
        rows.append(v)
        if progress:
            progress(i + 1, n_models, "reading models")
    if len(rows) != n_models:
        raise InputError(f"expected {n_models} models, read {len(rows)}")
    x = torch.stack(rows)
    gram = x @ x.T
    return gram
