"""The engine: joint spectral decomposition of a layer group by streaming Gram accumulation.

For N matrices W_i (m x n) the three modes are (DESIGN.md, "Definitions")::

    out-mode    G = sum_i W_i W_i^T      (m x m)  eigenvectors: shared output basis U
    in-mode     H = sum_i W_i^T W_i      (n x n)  eigenvectors: shared input basis V
    model-mode  K_ij = <W_i, W_j>_F      (N x N)  eigenvectors: model coordinates

Models are read one at a time; only the Gram, a few running sums and a small buffer are held,
so memory is O(d^2 + one model) for d = m or n, independent of N.  Three refinements:

* when the unfolding is thinner than the Gram (N*n < m in out-mode), the unfolding itself is
  the smaller object, so it is held and its small-side Gram x^T x (N*width square) is decomposed;
* model mode streams row-blocks of every model (:mod:`explorer.model_gram`) so that the
  N x mn stack is never held for large m*n;
* for d > 16384 the randomized path (:mod:`explorer.randomized`) applies the Gram as an
  operator over several passes instead of forming it.

LoRA ΔW has its own factored entry point, :func:`explorer.factored.decompose_factored`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Union

import numpy as np
import torch

from .backend import as_compute, pick_device, pick_dtype
from .errors import InputError, OptionError
from .gram import StackedGram, sym_mirror_, sym_update_  # noqa: F401  (re-exported)

Mode = Literal["out", "in", "model"]
Center = Literal["none", "model", "vector"]
MODES: tuple[str, ...] = ("out", "in", "model")
CENTERS: tuple[str, ...] = ("none", "model", "vector")
METHODS: tuple[str, ...] = ("auto", "exact", "randomized")
# Above this Gram side the exact path would hold a > 2 GiB float64 Gram and spend minutes in
# eigh; "auto" switches to the randomized path there.
RANDOMIZED_THRESHOLD = 16384
THIN_LIMIT_BYTES = 2 << 30

ProgressFn = Callable[[int, int, str], None]
MatrixSource = Union[Iterable[torch.Tensor], Callable[[], Iterator[torch.Tensor]]]


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
        How many leading basis vectors the result keeps (all eigenvalues are always kept on
        the exact path).
    method : {"auto", "exact", "randomized"}
        ``auto`` is exact unless the Gram side exceeds ``RANDOMIZED_THRESHOLD``.
    seed : int
        Seed of the randomized path's test matrix (results are deterministic given it).
    power_iters : int
        Subspace iterations of the randomized path (accuracy: see :mod:`explorer.randomized`).
    oversample : int
        Extra columns of the randomized path's test matrix beyond ``k_store``.
    """

    mode: str = "out"
    center: str = "none"
    dtype: str = "float64"
    device: str = "auto"
    k_store: int = 256
    method: str = "auto"
    seed: int = 0
    power_iters: int = 3
    oversample: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
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
    extras : dict
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
    extras: dict = field(default_factory=dict)
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
        if not 0 < tau <= 1:
            raise OptionError(f"tau must lie in (0, 1], got {tau}")
        cum = self.cumulative
        # A tiny slack keeps tau=1 reachable despite rounding in the cumulative sum.
        return int(min(np.searchsorted(cum, tau - 1e-12) + 1, len(cum)))

    @property
    def singular_values(self) -> np.ndarray:
        return np.sqrt(self.eigenvalues)


def sign_fix(vecs: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry positive, so results are deterministic.

    Parameters
    ----------
    vecs : Tensor, shape (d, k)
    """
    if vecs.shape[1] == 0:
        return vecs
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1], device=vecs.device)])
    signs[signs == 0] = 1
    return vecs * signs


_sign_fix = sign_fix  # older private name, kept for callers that imported it


# Below this side a full eigh is fast enough that the two-call partial path does not pay.
_PARTIAL_EIGH_MIN = 1024


def eigh_desc(gram: torch.Tensor, k_store: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decompose a symmetric PSD Gram; return descending eigenvalues and top-k vectors.

    Parameters
    ----------
    gram : Tensor, shape (d, d)
    k_store : int

    Returns
    -------
    eigenvalues : ndarray, shape (d,)
        Clipped at 0 (tiny negative values are rounding).
    basis : ndarray, shape (d, min(k_store, d))
    """
    gram = 0.5 * (gram + gram.T)  # symmetrise away accumulation rounding
    d = gram.shape[0]
    k = min(k_store, d)
    if gram.device.type == "cpu" and d >= _PARTIAL_EIGH_MIN and 0 < k <= d // 4:
        # A full eigh spends most of its time on the d eigenvectors, of which only k are kept:
        # all eigenvalues (one tridiagonalisation) plus the top-k vectors (LAPACK syevr on an
        # index subset) is ~1.5x faster at d = 4096 and agrees with eigh to round-off.
        import scipy.linalg

        vals = torch.flip(torch.linalg.eigvalsh(gram), dims=[0]).clamp_min(0)
        _, top = scipy.linalg.eigh(gram.double().numpy(), subset_by_index=[d - k, d - 1], driver="evr",
                                   check_finite=False)
        vecs = sign_fix(torch.flip(torch.from_numpy(np.ascontiguousarray(top)), dims=[1]))
        return vals.double().numpy(), vecs.double().numpy()
    vals, vecs = torch.linalg.eigh(gram)
    vals = torch.flip(vals, dims=[0]).clamp_min(0)
    vecs = sign_fix(torch.flip(vecs[:, -k:] if k else vecs[:, :0], dims=[1]))
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
        self.mode, self.shape, self.dtype, self.device = mode, tuple(shape), dtype, device
        d = shape[0] if mode == "out" else shape[1]
        self._stack = StackedGram(d, dtype, device)
        self.sum = torch.zeros(self.shape, dtype=dtype, device=device)  # sum_i W_i, for centering
        self.count = 0

    @property
    def gram(self) -> torch.Tensor:
        """The uncentered Gram so far, shape (d, d)."""
        return self._stack.flush()

    def add(self, w: torch.Tensor) -> None:
        """Add one matrix W (m x n)."""
        if tuple(w.shape) != self.shape:
            raise InputError(f"matrix of shape {tuple(w.shape)} does not match the group's {self.shape}")
        w = as_compute(w, self.dtype, self.device)
        self.sum += w
        self.count += 1
        # out-mode: G += W W^T, i.e. the columns of W; in-mode: H += W^T W, i.e. the rows.
        self._stack.add(w if self.mode == "out" else w.T)

    def centered(self, center: str) -> torch.Tensor:
        """The Gram after centering (``none``, ``model`` or ``vector``), shape (d, d)."""
        gram = self._stack.flush()
        n = self.count
        if center == "none" or n == 0:
            return gram.clone()
        if center == "model":
            # sum_i (W_i - mu)(W_i - mu)^T = G - N mu mu^T, mu = S / N
            s = self.sum if self.mode == "out" else self.sum.T
            return gram - (s @ s.T) / n
        # vector: subtract the mean column (out) / mean row (in) of the unfolding.
        m, ncol = self.shape
        if self.mode == "out":
            c = self.sum.sum(dim=1) / (n * ncol)
            return gram - (n * ncol) * torch.outer(c, c)
        r = self.sum.sum(dim=0) / (n * m)
        return gram - (n * m) * torch.outer(r, r)


def _iterate(matrices: MatrixSource) -> Iterable[torch.Tensor]:
    return matrices() if callable(matrices) else matrices


def _use_randomized(options: SpectralOptions, d: int) -> bool:
    if options.method == "randomized":
        return True
    return options.method == "auto" and d > RANDOMIZED_THRESHOLD


def prepare(shape, n_models: int, options: SpectralOptions, what: str
            ) -> tuple[tuple[int, int], torch.device, torch.dtype]:
    """Checks and policy every engine entry shares: integer (m, n), N >= 1, device and dtype.

    ``what`` names the members in the error (``models``, ``adapters``).
    """
    m, n = (int(x) for x in shape)
    if n_models < 1:
        raise InputError(f"the layer group has no {what} to decompose")
    device = pick_device(options.device)
    return (m, n), device, pick_dtype(options.dtype, device)


def decompose(
    matrices: MatrixSource,
    n_models: int,
    shape: tuple[int, int],
    options: SpectralOptions = SpectralOptions(),
    progress: ProgressFn | None = None,
    *,
    row_reader: Callable[[int, int], Iterable[torch.Tensor]] | None = None,
) -> Spectrum:
    """Decompose N matrices of one layer group in one mode.

    Parameters
    ----------
    matrices : iterable of Tensor (m, n), or callable() -> iterator of them
        Consumed one model at a time.  Pass the callable (``DenseStream.open``) to allow the
        several passes that the randomized path and large model-mode runs need.
    n_models : int
        N, for progress reporting and checks.
    shape : (m, n)
    options : SpectralOptions
    progress : callable(done, total, label), optional
        Called once per model read.
    row_reader : callable(r0, r1) -> iterable of Tensor (r1 - r0, n), optional
        Model mode only: yields rows r0:r1 of every model in order (e.g.
        :func:`explorer.model_gram.family_row_reader`), so K is streamed by row-blocks in
        O(N^2 + N * block) memory however large m*n is.

    Returns
    -------
    Spectrum
    """
    shape, device, dtype = prepare(shape, n_models, options, "models")
    m, n = shape
    if options.mode == "model":
        from .model_gram import model_gram

        gram = model_gram(matrices, n_models, shape, dtype, device, progress, row_reader=row_reader)
        if options.center != "none":
            # Both centerings subtract the mean model here: K_c = J K J, J = I - 11^T/N.
            j = torch.eye(n_models, dtype=dtype, device=device) - 1.0 / n_models
            gram = j @ gram @ j
        vals, vecs = eigh_desc(gram, options.k_store)
        return Spectrum(vals, vecs, "model", options.center, n_models, shape)
    d, width = (m, n) if options.mode == "out" else (n, m)
    # A thin unfolding (fewer columns than d) is exact and smaller than the Gram: prefer it,
    # even above the randomized threshold, while it fits in THIN_LIMIT_BYTES.
    thin = n_models * width < d and (options.method == "exact" or d * n_models * width * 8 <= THIN_LIMIT_BYTES)
    if options.method == "randomized" or (_use_randomized(options, d) and not thin):
        from .randomized import randomized_decompose

        return randomized_decompose(matrices, n_models, shape, options, progress)
    if n_models * width < d:
        return _thin(matrices, n_models, shape, options, dtype, device, progress)
    acc = GramAccumulator(options.mode, shape, dtype, device)
    for i, w in enumerate(_iterate(matrices)):
        acc.add(w)
        if progress:
            progress(i + 1, n_models, "reading models")
    if acc.count != n_models:
        raise InputError(f"expected {n_models} models, read {acc.count}")
    vals, vecs = eigh_desc(acc.centered(options.center), options.k_store)
    return Spectrum(vals, vecs, options.mode, options.center, n_models, shape)


def _thin(matrices, n_models, shape, options, dtype, device, progress) -> Spectrum:
    """The unfolding x (d x N*width) is smaller than its d x d Gram: hold it, use x^T x instead.

    Same non-zero eigenvalues; left vectors U_k = x Q_k / sigma_k.  Eigenvalues beyond the
    unfolding's N*width columns are exactly zero.
    """
    m, n = shape
    out = options.mode == "out"
    d = m if out else n
    blocks: list[torch.Tensor] = []
    for i, w in enumerate(_iterate(matrices)):
        if tuple(w.shape) != shape:
            raise InputError(f"matrix of shape {tuple(w.shape)} does not match the group's {shape}")
        w = as_compute(w, dtype, device)
        blocks.append(w if out else w.T)
        if progress:
            progress(i + 1, n_models, "reading models")
    if len(blocks) != n_models:
        raise InputError(f"expected {n_models} models, read {len(blocks)}")
    if options.center == "model":
        mean = torch.stack(blocks).mean(dim=0)
        blocks = [b - mean for b in blocks]
    x = torch.cat(blocks, dim=1)  # (d, N * width)
    if options.center == "vector":
        x = x - x.mean(dim=1, keepdim=True)
    # The Gram of the unfolding's smaller side, x^T x (w x w, w = N * width < d), has the same
    # non-zero eigenvalues; U_k = x Q_k / sigma_k recovers the left vectors.  This is one matmul
    # and a small eigh instead of a d x w SVD (its relative accuracy on eigenvalue j is
    # ~eps * lambda_1 / lambda_j, well inside 1e-10 of the largest, as everywhere in the engine).
    w_vals, q = eigh_desc(x.T @ x, options.k_store)
    vals = torch.zeros(d, dtype=torch.float64)
    vals[: w_vals.shape[0]] = torch.from_numpy(w_vals)
    k = min(options.k_store, q.shape[1], d)
    lam = torch.from_numpy(w_vals[:k]).to(x.dtype)
    keep = lam > lam[0] * torch.finfo(x.dtype).eps * x.shape[1] if k else lam > 0
    u = (x @ torch.from_numpy(q[:, :k]).to(x)) / torch.sqrt(lam.clamp_min(torch.finfo(x.dtype).tiny))
    if not bool(keep.all()):
        # Columns of numerically zero eigenvalues carry no direction: any orthonormal completion
        # is as valid, so fill them with seeded noise before re-orthonormalising.
        gen = torch.Generator().manual_seed(options.seed)
        noise = torch.randn(u.shape, generator=gen, dtype=u.dtype).to(u.device)
        u = torch.where(keep, u, noise)
    u = torch.linalg.qr(u)[0]  # Gram-Schmidt order: column j keeps the span of the first j
    basis = sign_fix(u).cpu().double().numpy()
    return Spectrum(vals.numpy(), basis, options.mode, options.center, n_models, shape, method="thin")
