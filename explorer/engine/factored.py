"""The factored engine for LoRA ΔW: W_i = s_i B_i A_i, never formed as N dense m x n matrices.

With B_i (m x r_i), A_i (r_i x n) (mixed ranks allowed)::

    G = sum_i s_i^2 B_i (A_i A_i^T) B_i^T = sum_i P_i P_i^T,  P_i = s_i B_i T_i,   T_i T_i^T = A_i A_i^T
    H = sum_i s_i^2 A_i^T (B_i^T B_i) A_i = sum_i P_i P_i^T,  P_i = s_i A_i^T T_i, T_i T_i^T = B_i^T B_i
    K_ij = s_i s_j tr((B_i^T B_j)(A_j A_i^T))

(each adapter is a :class:`~explorer.core.lowrank.LowRank`, P_i its ``gram_factor``; the model
kernel K is built by :func:`~explorer.engine.model_gram.factored_model_gram`), so out/in mode
is a Gram of stacked thin column blocks P_i (d x r_i): one large product per buffer instead of
one rank-r_i product per adapter.  When the total rank sum_i r_i stays below
d the stacked blocks themselves are the smaller object and are decomposed exactly by QR plus a
small eigh.  Centering subtracts a low-rank or rank-one correction:

* ``model``: G_c = G - S S^T / N with S = sum_i s_i B_i A_i = [s_1 B_1 ... s_N B_N][A_1; ...; A_N],
  kept as concatenated factors while their rank is below min(m, n)/2, dense m x n after
  (:class:`~explorer.core.lowrank_sum.LowRankSum`);
* ``vector``: G_c = G - N n c c^T, c = sum_i s_i B_i (A_i 1) / (N n) (mean column of the
  out-mode unfolding); in-mode uses the mean row, sum_i s_i (1^T B_i) A_i / (N m).

Memory: O(d^2 + m n) in out/in mode; model mode holds all factors, O(sum_i r_i (m + n)), which is
the adapters' own size, never N m n.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from explorer.core.errors import InputError
from explorer.core.linalg import eigh_desc, sign_fix, symmetrize
from explorer.core.lowrank import LowRank, as_lowrank
from explorer.core.lowrank_sum import LowRankSum
from explorer.core.progress import ProgressFn
from explorer.engine.gram import StackedGram
from explorer.engine.model_gram import decompose_kernel, factored_model_gram
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.engine.plan import make_plan
from explorer.engine.randomized import randomized_decompose_factored

Factor = Union[LowRank, tuple[torch.Tensor, torch.Tensor, float]]
FactorSource = Union[Iterable[Factor], Callable[[], Iterator[Factor]]]


def decompose_factored(
    factors: FactorSource,
    n_models: int,
    shape: tuple[int, int],
    options: SpectralOptions = SpectralOptions(),
    progress: ProgressFn | None = None,
    *,
    ranks: Sequence[int] | None = None,
) -> Spectrum:
    """Decompose LoRA updates W_i = s_i B_i A_i in one mode without forming them densely.

    Parameters
    ----------
    factors : iterable of LowRank or (B, A, scale), or callable() -> iterator of them
        B : Tensor (m, r_i); A : Tensor (r_i, n); scale : float.  Ranks may differ.  A
        ``FactorStream.open`` yields :class:`~explorer.core.lowrank.LowRank` items; plain triples
        are checked by :func:`~explorer.core.lowrank.as_lowrank`.
    n_models : int
    shape : (m, n) of each update
    options : SpectralOptions
    progress : callable(done, total, label), optional
        Called once per adapter read.
    ranks : sequence of int, optional
        r_i of each adapter, when known before reading (``FactorStream.ranks``): the solver plan
        then knows the unfolding's width and can keep it thin above the randomized threshold.

    Returns
    -------
    Spectrum
        Same conventions as :func:`explorer.engine.dense.decompose` on the dense updates.
    """
    options = options.resolved()  # no view here: a mode left unchosen means out, as for dW
    plan = make_plan(shape, n_models, options, ranks=ranks, factored=True, what="adapters")
    shape, device, dtype = plan.shape, plan.device, plan.dtype
    m, n = shape
    if plan.solver == "model":
        gram = factored_model_gram(factors, n_models, shape, dtype, device, progress)
        return decompose_kernel(gram, n_models, shape, options, method="factored")
    if plan.solver == "randomized":
        return randomized_decompose_factored(factors, n_models, shape, options, progress, plan=plan)
    out = options.mode == "out"
    d = plan.d
    # "thin" (known ranks, sum r_i < d): hold every block; "gram": hold while they stay thin.
    hold_limit = d if plan.solver == "thin" else d // 2
    items = factors() if callable(factors) else factors
    held: list[torch.Tensor] | None = []  # the P_i while sum r_i is small enough to stay thin
    held_cols = 0
    stack: StackedGram | None = None
    # The side matrices X_i: W_i (out-mode) or W_i^T (in-mode), and their running sum.
    mean = LowRankSum((d, n if out else m), dtype, device) if options.center == "model" else None
    vec = torch.zeros(d, dtype=dtype, device=device)
    count = 0
    for i, item in enumerate(items):
        x = as_lowrank(item, i, shape, dtype, device)
        if not out:
            x = x.T
        piece = x.gram_factor()  # (d, min(r, e)):  piece piece^T = X X^T
        vec += x.column_sum()
        if mean is not None:
            mean.add(x)
        if held is not None and held_cols + piece.shape[1] <= hold_limit:
            held.append(piece)
            held_cols += piece.shape[1]
        else:
            if stack is None:
                stack = StackedGram(d, dtype, device)
                for p in held or []:
                    stack.add(p)
                held = None
            stack.add(piece)
        count += 1
        if progress:
            progress(i + 1, n_models, "reading adapters")
    if count != n_models:
        raise InputError(f"expected {n_models} adapters, read {count}")
    # The centering correction as  weight * F F^T.
    if options.center == "model":
        corr, weight = mean.gram_factor(), -1.0 / n_models
    elif options.center == "vector":
        width = n if out else m
        corr, weight = (vec / (n_models * width))[:, None], -float(n_models * width)
    else:
        corr, weight = None, 0.0
    if stack is None and (held_cols + (corr.shape[1] if corr is not None else 0)) < d:
        vals, vecs = _thin_eig(held, corr, weight, d, options.k_store, dtype, device)
        return Spectrum(vals, vecs, options.mode, options.center, n_models, shape, method="factored")
    if stack is None:
        stack = StackedGram(d, dtype, device)
        for p in held:
            stack.add(p)
    gram = stack.flush()
    if corr is not None:
        gram = gram.addmm(corr, corr.T, alpha=weight)
    vals, vecs = eigh_desc(gram, options.k_store)
    return Spectrum(vals, vecs, options.mode, options.center, n_models, shape, method="factored")


def _thin_eig(held, corr, weight, d, k_store, dtype, device) -> tuple[np.ndarray, np.ndarray]:
    """Eigen of Z D Z^T for Z = [P_1 ... P_N, F] (d x c, c < d), D = diag(1, ..., weight).

    Z = Q T (thin QR) gives Z D Z^T = Q (T D T^T) Q^T, so a c x c eigh is exact.
    """
    cols = list(held)
    signs = [torch.ones(p.shape[1], dtype=dtype, device=device) for p in held]
    if corr is not None:
        cols.append(corr)
        signs.append(torch.full((corr.shape[1],), weight, dtype=dtype, device=device))
    if not cols:
        return np.zeros(d), np.zeros((d, 0))
    z = torch.cat(cols, dim=1)
    dvec = torch.cat(signs)
    q, t = torch.linalg.qr(z, mode="reduced")
    small = (t * dvec) @ t.T
    small = symmetrize(small)
    ev, w = torch.linalg.eigh(small)
    ev, w = torch.flip(ev, dims=[0]).clamp_min(0), torch.flip(w, dims=[1])
    k = min(k_store, w.shape[1])
    basis = sign_fix(q @ w[:, :k])
    vals = np.zeros(d)
    vals[: ev.shape[0]] = ev.cpu().double().numpy()
    return vals, basis.cpu().double().numpy()
