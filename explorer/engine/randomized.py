"""Randomized path for very large Gram sides (m or n > 16384): subspace iteration
(:func:`explorer.core.topk.subspace_top_eigh`) on the streamed Gram operator, never forming
the d x d Gram.

With l = k_store + oversample columns and q = power_iters::

    Y = G_c Omega              (Omega: d x l Gaussian, seeded)      one pass over the models
    repeat q times: Q = qr(Y); Y = G_c Q                            one pass each
    Q = qr(Y); T = Q^T G_c Q; T = V diag(theta) V^T                 one pass
    eigenvalues ~ theta[:k], basis ~ Q V[:, :k]

where G_c Y = sum_i W_i (W_i^T Y) minus the centering term, applied per model (dense W_i, or
s_i B_i (A_i (...)) for LoRA factors), so memory is O(d l + one model).  It needs a re-openable
stream (q + 2 passes).

Accuracy (Rayleigh-Ritz after q subspace iterations; lambda_j are the Gram's eigenvalues, i.e.
squared singular values): the angle between the j-th computed and true eigenvector decays like
(lambda_{l+1} / lambda_j)^(q+1), and the relative eigenvalue error like its square,
(lambda_{l+1} / lambda_j)^(2q+2), so with the defaults (q = 3, l = k + 16) a component whose
eigenvalue is 2x the (l+1)-th is accurate to ~ 4e-3 relative, 10x to ~ 1e-8, and components
of a planted low-rank family (gap to noise >> 10) to float64 round-off
(tests/test_randomized.py checks rel. 1e-8 on a planted family).  Components near
lambda_{l+1} are underestimated; only the top k_store are returned, the rest are not known.
The total energy (trace) is exact, so EVR is exact for the returned components.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from explorer.core.backend import as_compute
from explorer.core.errors import InputError, OptionError
from explorer.core.lowrank import LowRank, as_lowrank
from explorer.core.lowrank_sum import LowRankSum
from explorer.core.progress import ProgressFn
from explorer.core.topk import subspace_top_eigh
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.engine.plan import SolverPlan, make_plan


def _need_opener(source, what: str) -> Callable[[], Iterator]:
    if not callable(source):
        raise OptionError(
            f"the randomized path reads the {what} several times; pass a re-openable stream "
            "(e.g. DenseStream.open), or set method='exact'"
        )
    return source


class _Operator:
    """G_c = sum_i X_i X_i^T - centering, over the models' side matrices X_i (LowRank, d x e).

    X_i is W_i (out-mode) or W_i^T (in-mode), dense or factored; ``items`` yields them already
    checked and in the accumulation dtype and device.
    """

    def __init__(self, items: Callable[[], Iterator[LowRank]], n_models: int, d: int, width: int, center: str,
                 dtype: torch.dtype, device: torch.device, progress: ProgressFn | None):
        self.items, self.n, self.d, self.width, self.center = items, n_models, d, width, center
        self.dtype, self.device, self.progress = dtype, device, progress
        self.trace = 0.0
        self.corr: torch.Tensor | None = None  # F with centering term  weight * F F^T
        self.weight = 0.0
        self._applied = False

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """G_c Y for Y (d x l); the first call also gathers trace and centering sums."""
        first = not self._applied
        self._applied = True
        out = torch.zeros_like(y)
        total = LowRankSum((self.d, self.width), self.dtype, self.device) if first and self.center == "model" else None
        col = torch.zeros(self.d, dtype=self.dtype, device=self.device)
        count = 0
        for i, x in enumerate(self.items()):
            out += x @ x.left_product(y).T  # X (X^T Y)
            if first:
                self.trace += x.sq_norm()
                col += x.column_sum()
                if total is not None:
                    total.add(x)
            count += 1
            if self.progress:
                self.progress(i + 1, self.n, "reading models (randomized pass)")
        if count != self.n:
            raise InputError(f"expected {self.n} models, read {count}")
        if first:
            self._set_correction(total, col)
        if self.corr is not None:
            out.addmm_(self.corr, self.corr.T @ y, alpha=self.weight)
        return out

    def _set_correction(self, total: LowRankSum | None, col: torch.Tensor) -> None:
        if self.center == "model":
            f = total.gram_factor()  # F F^T = S S^T, S = sum_i X_i kept low-rank while it pays
            self.corr, self.weight = f, -1.0 / self.n
            self.trace -= float((f * f).sum()) / self.n
        elif self.center == "vector":
            c = col / (self.n * self.width)
            self.corr, self.weight = c[:, None], -float(self.n * self.width)
            self.trace -= float(self.n * self.width * (c @ c))


def _run(op: _Operator, options: SpectralOptions, n_models: int, shape, dtype, device) -> Spectrum:
    vals, basis = subspace_top_eigh(op.apply, op.d, options.k_store, oversample=options.oversample,
                                    iters=options.power_iters, seed=options.seed, dtype=dtype, device=device)
    return Spectrum(vals, basis.cpu().double().numpy(), options.mode,
                    options.center, n_models, shape, trace=max(op.trace, 0.0), method="randomized")


def randomized_decompose(
    matrices: Callable[[], Iterator[torch.Tensor]],
    n_models: int,
    shape: tuple[int, int],
    options: SpectralOptions,
    progress: ProgressFn | None = None,
    *,
    plan: SolverPlan | None = None,
) -> Spectrum:
    """Top ``k_store`` components of the out- or in-mode Gram of dense matrices, randomized.

    Parameters
    ----------
    matrices : callable() -> iterator of Tensor (m, n)
        Re-openable: read ``power_iters + 2`` times.
    n_models : int
    shape : (m, n)
    options : SpectralOptions
        ``mode`` out or in; ``k_store``, ``oversample``, ``power_iters``, ``seed`` as above.
    progress : callable(done, total, label), optional
    plan : SolverPlan, optional
        The caller's plan (device and dtype); made here when omitted.

    Returns
    -------
    Spectrum
        ``eigenvalues`` (k,), ``basis`` (d, k), ``trace`` exact, ``method == "randomized"``.
    """
    opener = _need_opener(matrices, "matrices")
    options = options.resolved()  # a mode left unchosen means out (no view at this level)
    if options.mode not in ("out", "in"):
        raise OptionError("the randomized path applies to out- and in-mode; model mode is exact")
    plan = plan or make_plan(shape, n_models, options)
    device, dtype = plan.device, plan.dtype
    m, n = shape
    out = options.mode == "out"

    def items() -> Iterator[LowRank]:
        for w in opener():
            if tuple(w.shape) != tuple(shape):
                raise InputError(f"matrix of shape {tuple(w.shape)} does not match the group's {tuple(shape)}")
            w = LowRank(as_compute(w, dtype, device))
            yield w if out else w.T

    op = _Operator(items, n_models, m if out else n, n if out else m, options.center, dtype, device, progress)
    return _run(op, options, n_models, tuple(shape), dtype, device)


def randomized_decompose_factored(
    factors: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, float]]],
    n_models: int,
    shape: tuple[int, int],
    options: SpectralOptions,
    progress: ProgressFn | None = None,
    *,
    plan: SolverPlan | None = None,
) -> Spectrum:
    """The randomized path for LoRA updates W_i = s_i B_i A_i, applied factored.

    Parameters
    ----------
    factors : callable() -> iterator of LowRank or (B (m, r_i), A (r_i, n), scale)
    n_models, shape, options, progress, plan : as :func:`randomized_decompose`
    """
    opener = _need_opener(factors, "adapters")
    options = options.resolved()  # a mode left unchosen means out (no view at this level)
    if options.mode not in ("out", "in"):
        raise OptionError("the randomized path applies to out- and in-mode; model mode is exact")
    plan = plan or make_plan(shape, n_models, options, factored=True, what="adapters")
    device, dtype = plan.device, plan.dtype
    m, n = shape
    out = options.mode == "out"

    def items() -> Iterator[LowRank]:
        for i, item in enumerate(opener()):
            x = as_lowrank(item, i, shape, dtype, device)
            yield x if out else x.T

    op = _Operator(items, n_models, m if out else n, n if out else m, options.center, dtype, device, progress)
    return _run(op, options, n_models, tuple(shape), dtype, device)
