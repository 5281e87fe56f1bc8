"""The engine: joint spectral decomposition of a layer group by streaming Gram accumulation.

For N matrices W_i (m x n) the three modes are (DESIGN.md, "Definitions")::

    out-mode    G = sum_i W_i W_i^T      (m x m)  eigenvectors: shared output basis U
    in-mode     H = sum_i W_i^T W_i      (n x n)  eigenvectors: shared input basis V
    model-mode  K_ij = <W_i, W_j>_F      (N x N)  eigenvectors: model coordinates

Models are read one at a time; only the Gram, a few running sums and a small buffer are held,
so memory is O(d^2 + one model) for d = m or n, independent of N.  Three refinements:

* when the unfolding is thinner than the Gram (N*n < m in out-mode), the unfolding itself is
  the smaller object, so it is held and its small-side Gram x^T x (N*width square) is decomposed;
* model mode streams row-blocks of every model (:mod:`explorer.engine.model_gram`) so that the
  N x mn stack is never held for large m*n; the raw kernel and its decomposition are separate
  steps there (``model_kernel``, ``decompose_kernel``), so a caller can reuse K;
* for d > 16384 the randomized path (:mod:`explorer.engine.randomized`) applies the Gram as an
  operator over several passes instead of forming it.

LoRA ΔW has its own factored entry point, :func:`explorer.engine.factored.decompose_factored`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Union

import torch

from explorer.core.backend import as_compute
from explorer.core.errors import InputError, OptionError
from explorer.core.linalg import center_matrix, centered_gram, eigh_desc, sign_fix
from explorer.core.progress import ProgressFn
from explorer.engine.gram import StackedGram
from explorer.engine.model_gram import decompose_kernel, model_gram
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.engine.plan import SolverPlan, make_plan
from explorer.engine.randomized import randomized_decompose

MatrixSource = Union[Iterable[torch.Tensor], Callable[[], Iterator[torch.Tensor]]]


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
        side_sum = self.sum if self.mode == "out" else self.sum.T  # sum of the side matrices
        return centered_gram(self._stack.flush(), side_sum, self.count, center)


def _iterate(matrices: MatrixSource) -> Iterable[torch.Tensor]:
    return matrices() if callable(matrices) else matrices


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
        :func:`explorer.engine.model_gram.family_row_reader`), so K is streamed by row-blocks in
        O(N^2 + N * block) memory however large m*n is.

    Returns
    -------
    Spectrum
    """
    options = options.resolved()  # bare matrices, no view: a mode left unchosen means out
    plan = make_plan(shape, n_models, options, what="models")
    return SOLVERS[plan.solver](matrices, plan, options, progress, row_reader)


def _model(matrices, plan: SolverPlan, options, progress, row_reader) -> Spectrum:
    gram = model_gram(matrices, plan.n_models, plan.shape, plan.dtype, plan.device, progress, row_reader=row_reader)
    return decompose_kernel(gram, plan.n_models, plan.shape, options)


def _randomized(matrices, plan: SolverPlan, options, progress, row_reader) -> Spectrum:
    return randomized_decompose(matrices, plan.n_models, plan.shape, options, progress, plan=plan)


def _gram(matrices, plan: SolverPlan, options, progress, row_reader) -> Spectrum:
    acc = GramAccumulator(options.mode, plan.shape, plan.dtype, plan.device)
    for i, w in enumerate(_iterate(matrices)):
        acc.add(w)
        if progress:
            progress(i + 1, plan.n_models, "reading models")
    if acc.count != plan.n_models:
        raise InputError(f"expected {plan.n_models} models, read {acc.count}")
    side_sum = acc.sum if options.mode == "out" else acc.sum.T
    return decompose_gram(acc.gram, side_sum, plan.n_models, plan.shape, options)


def decompose_gram(gram: torch.Tensor, side_sum: torch.Tensor, n_models: int, shape: tuple[int, int],
                   options: SpectralOptions, method: str = "exact") -> Spectrum:
    """The Gram path's last step: center a raw Gram already accumulated, and decompose it.

    Parameters
    ----------
    gram : Tensor, shape (d, d)
        Raw G = sum_i X_i X_i^T of the side matrices (X_i = W_i in out-mode, W_i^T in in-mode).
    side_sum : Tensor, shape (d, e)
        S = sum_i X_i, for the centering.
    n_models : int
    shape : (m, n) of each model
    options : SpectralOptions
        Out- or in-mode (a mode left unchosen means out).
    method : str
        Recorded in the Spectrum (``exact``, or ``factored`` for LoRA products).

    Returns
    -------
    Spectrum
        The same as :func:`decompose` on the models G and S were summed from.
    """
    options = options.resolved()
    vals, vecs = eigh_desc(centered_gram(gram, side_sum, n_models, options.center), options.k_store)
    return Spectrum(vals, vecs, options.mode, options.center, n_models, tuple(shape), method=method)


def _thin_solver(matrices, plan: SolverPlan, options, progress, row_reader) -> Spectrum:
    return _thin(matrices, plan.n_models, plan.shape, options, plan.dtype, plan.device, progress)


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
    z = center_matrix(torch.stack(blocks).sum(dim=0), n_models, options.center)
    if z is not None:  # the unfolding is held, so the models themselves are centred
        blocks = [b - z for b in blocks]
    x = torch.cat(blocks, dim=1)  # (d, N * width)
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


# The dense solvers by name (see :mod:`explorer.engine.plan`).
SOLVERS: dict[str, Callable[..., Spectrum]] = {
    "gram": _gram, "thin": _thin_solver, "randomized": _randomized, "model": _model,
}
