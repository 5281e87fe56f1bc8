"""The factored engine for LoRA ΔW: W_i = s_i B_i A_i, never formed as N dense m x n matrices.

With B_i (m x r_i), A_i (r_i x n) (mixed ranks allowed)::

    G = sum_i s_i^2 B_i (A_i A_i^T) B_i^T = sum_i P_i P_i^T,  P_i = s_i B_i R_i^T,  A_i^T = Q R_i
    H = sum_i s_i^2 A_i^T (B_i^T B_i) A_i = sum_i P_i P_i^T,  P_i = s_i A_i^T R_i^T, B_i = Q R_i
    K_ij = s_i s_j tr((B_i^T B_j)(A_j A_i^T))

so out/in mode is a Gram of stacked thin column blocks P_i (d x r_i): one large product per
buffer instead of one rank-r_i product per adapter.  When the total rank sum_i r_i stays below
d the stacked blocks themselves are the smaller object and are decomposed exactly by QR plus a
small eigh.  Centering subtracts a low-rank or rank-one correction:

* ``model``: G_c = G - S S^T / N with S = sum_i s_i B_i A_i = [s_1 B_1 ... s_N B_N][A_1; ...; A_N],
  kept as concatenated factors while their rank is below min(m, n)/2, dense m x n after;
* ``vector``: G_c = G - N n c c^T, c = sum_i s_i B_i (A_i 1) / (N n) (mean column of the
  out-mode unfolding); in-mode uses the mean row, sum_i s_i (1^T B_i) A_i / (N m).

Memory: O(d^2 + m n) in out/in mode; model mode holds all factors, O(sum_i r_i (m + n)), which is
the adapters' own size, never N m n.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch

from explorer.core.backend import as_compute
from explorer.core.errors import InputError
from explorer.core.linalg import double_center, eigh_desc, sign_fix, symmetrize
from explorer.core.progress import ProgressFn
from explorer.engine.gram import StackedGram
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.engine.plan import make_plan
from explorer.engine.randomized import randomized_decompose_factored

Factor = tuple[torch.Tensor, torch.Tensor, float]
FactorSource = Union[Iterable[Factor], Callable[[], Iterator[Factor]]]
# Bytes of the per-block work matrices of the factored model-mode Gram.
_MODEL_BLOCK_BYTES = 192 << 20


def _checked(item, i: int, shape: tuple[int, int], dtype, device) -> tuple[torch.Tensor, torch.Tensor, float]:
    try:
        b, a, s = item
    except (TypeError, ValueError):
        raise InputError(f"adapter {i}: expected a (B, A, scale) triple") from None
    m, n = shape
    if b.dim() != 2 or a.dim() != 2 or b.shape[0] != m or a.shape[1] != n or b.shape[1] != a.shape[0]:
        raise InputError(
            f"adapter {i}: B {tuple(b.shape)} and A {tuple(a.shape)} do not factor an {m}x{n} update"
        )
    s = float(s)
    if not np.isfinite(s):
        raise InputError(f"adapter {i}: scale {s} is not finite")
    return as_compute(b, dtype, device), as_compute(a, dtype, device), s


class _LowRankSum:
    """S = sum_i L_i R_i (m x n), kept as concatenated factors until dense is cheaper."""

    def __init__(self, shape: tuple[int, int], dtype, device):
        self.shape, self.dtype, self.device = shape, dtype, device
        self.left: list[torch.Tensor] = []
        self.right: list[torch.Tensor] = []
        self.rank = 0
        self.dense: torch.Tensor | None = None
        self._cap = max(1, min(shape) // 2)

    def add(self, left: torch.Tensor, right: torch.Tensor) -> None:
        self.left.append(left)
        self.right.append(right)
        self.rank += left.shape[1]
        if self.rank > self._cap:
            # Fold the stacked factors in with one compute-bound product.
            prod = torch.cat(self.left, dim=1) @ torch.cat(self.right, dim=0)
            self.dense = prod if self.dense is None else self.dense.add_(prod)
            self.left, self.right, self.rank = [], [], 0
            self._cap = max(256, min(self.shape) // 8)  # keep folding in wide batches

    def gram_factor(self, out: bool) -> torch.Tensor:
        """F with F F^T = S S^T (out) or S^T S (in), shape (d, q)."""
        if self.dense is not None:
            if self.left:
                self.dense.add_(torch.cat(self.left, dim=1) @ torch.cat(self.right, dim=0))
                self.left, self.right = [], []
            return self.dense if out else self.dense.T
        left, right = torch.cat(self.left, dim=1), torch.cat(self.right, dim=0)
        if out:  # S S^T = L (R R^T) L^T, R^T = Q T  ->  (L T^T)(L T^T)^T
            return left @ torch.linalg.qr(right.T, mode="r").R.T
        return right.T @ torch.linalg.qr(left, mode="r").R.T


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
    factors : iterable of (B, A, scale), or callable() -> iterator of them
        B : Tensor (m, r_i); A : Tensor (r_i, n); scale : float.  Ranks may differ.
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
    plan = make_plan(shape, n_models, options, ranks=ranks, factored=True, what="adapters")
    shape, device, dtype = plan.shape, plan.device, plan.dtype
    m, n = shape
    if plan.solver == "model":
        return _model_mode(factors, n_models, shape, options, dtype, device, progress)
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
    mean = _LowRankSum(shape, dtype, device) if options.center == "model" else None
    vec = torch.zeros(d, dtype=dtype, device=device)
    count = 0
    for i, item in enumerate(items):
        b, a, s = _checked(item, i, shape, dtype, device)
        if out:
            piece = s * (b @ torch.linalg.qr(a.T, mode="r").R.T)  # (m, min(r, n))
            vec += s * (b @ a.sum(dim=1))
        else:
            piece = s * (a.T @ torch.linalg.qr(b, mode="r").R.T)  # (n, min(r, m))
            vec += s * (b.sum(dim=0) @ a)
        if mean is not None:
            mean.add(s * b, a)
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
        corr, weight = mean.gram_factor(out), -1.0 / n_models
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


def _model_mode(factors, n_models, shape, options, dtype, device, progress) -> Spectrum:
    """K_ij = s_i s_j tr((B_i^T B_j)(A_j A_i^T)), in blocks of models, upper triangle only."""
    items = factors() if callable(factors) else factors
    bs: list[torch.Tensor] = []
    as_: list[torch.Tensor] = []
    seg: list[int] = []
    for i, item in enumerate(items):
        b, a, s = _checked(item, i, shape, dtype, device)
        bs.append(s * b)
        as_.append(a)
        seg.extend([i] * b.shape[1])
        if progress:
            progress(i + 1, n_models, "reading adapters")
    if len(bs) != n_models:
        raise InputError(f"expected {n_models} adapters, read {len(bs)}")
    bb = torch.cat(bs, dim=1)  # (m, R)
    aa = torch.cat(as_, dim=0)  # (R, n)
    del bs, as_
    seg_t = torch.tensor(seg, device=device)
    starts = np.concatenate([[0], np.cumsum(np.bincount(np.asarray(seg), minlength=n_models))])
    total = int(starts[-1])
    item = torch.empty((), dtype=dtype).element_size()
    per_row = max(1, _MODEL_BLOCK_BYTES // (3 * max(total, 1) * item))
    gram = torch.zeros(n_models, n_models, dtype=dtype, device=device)
    i0 = 0
    while i0 < n_models:
        i1 = i0 + 1
        while i1 < n_models and starts[i1 + 1] - starts[i0] <= per_row:
            i1 += 1
        c0, c1 = int(starts[i0]), int(starts[i1])
        # Only columns of models >= i0 are needed: K is symmetric.
        pb = bb[:, c0:c1].T @ bb[:, c0:]  # (R_I, R - c0)
        pb.mul_(aa[c0:c1] @ aa[c0:].T)
        rows = torch.zeros(i1 - i0, total - c0, dtype=dtype, device=device)
        rows.index_add_(0, seg_t[c0:c1] - i0, pb)
        block = torch.zeros(i1 - i0, n_models - i0, dtype=dtype, device=device)
        block.index_add_(1, seg_t[c0:] - i0, rows)
        gram[i0:i1, i0:] = block
        gram[i0:, i0:i1] = block.T
        i0 = i1
    if options.center != "none":
        gram = double_center(gram)
    vals, vecs = eigh_desc(gram, options.k_store)
    return Spectrum(vals, vecs, "model", options.center, n_models, shape, method="factored")
