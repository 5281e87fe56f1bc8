"""Pass 2 of the out/in-mode metrics: every model measured against bases already fitted.

Each model is measured against the shared basis (in-sample energies, two-sided coordinates),
against the basis fitted without its fold (k-fold) or without itself (leave-one-out, downdating
the Gram by that one model), against the held-out mean (mean-only baseline), and gets its own
top-k subspace (model x model angles); where the plan keeps it, each model also joins the model
stack (:func:`explorer.metrics.moments.stack_entry`) here rather than in pass 1, so the stack is
never held beside the fold Grams (the peak of an analysis at side 4096).  What is needed is gathered once in a
:class:`MeasureContext`; :func:`measure_models` measures any subset of the models against it
and returns their rows (:class:`Measured`), so a cluster measures shards of the models on its
workers and the rows are put together by model index (:meth:`Measured.absorb`).

Blocks of models are projected at once (one product per block and basis: per-model products
are memory-bound); factored models stay factored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from explorer.core.linalg import center_matrix, centered_gram
from explorer.core.lowrank import LowRank, left_factor_products
from explorer.core.timing import stage
from explorer.core.topk import refit_basis
from explorer.metrics import heldout
from explorer.metrics.moments import stack_entry
from explorer.metrics.results import two_sided_curve, two_sided_from_core

# Columns of side matrices stacked into one projection product in pass 2.
_BLOCK_COLUMNS = 1024


def _blocks(items: Iterable[tuple[int, LowRank]], columns: int = _BLOCK_COLUMNS):
    """Group ``(index, side matrix)`` pairs into lists of about ``columns`` left-factor columns."""
    block: list = []
    width = 0
    for i, x in items:
        block.append((i, x))
        width += x.left.shape[1]
        if width >= columns:
            yield block
            block, width = [], 0
    if block:
        yield block


def _by_fold(block, folds: np.ndarray, factored_only: bool = False):
    """(fold, positions in ``block`` of its models): the grouping both per-fold products use."""
    for f in sorted({int(folds[i]) for i, _ in block}):
        members = [j for j, (i, x) in enumerate(block) if int(folds[i]) == f and (x.factored or not factored_only)]
        if members:
            yield f, members


def _fold_products(block, folds: np.ndarray, fold_fit: dict) -> list[torch.Tensor]:
    """U_f^T (s L_i) for each model of a block with the basis of its own fold (one product per fold)."""
    out: list = [None] * len(block)
    for f, members in _by_fold(block, folds):
        for j, p in zip(members, left_factor_products(fold_fit[f][0], [block[j][1] for j in members])):
            out[j] = p
    return out


def _fold_mean_inners(block, folds: np.ndarray, fold_fit: dict) -> list[float | None]:
    """<X_i, mu_f> for the factored models of a block against their fold's held-out mean.

    One product per fold, mu_f^T [s L_i ...] (e x sum r_i), instead of a pass over the dense d x e
    mean per model (memory-bound: 134 MB read per 4096 x 4096 ΔW); None for dense models.
    """
    out: list = [None] * len(block)
    for f, members in _by_fold(block, folds, factored_only=True):
        xs = [block[j][1] for j in members]
        for j, x, p in zip(members, xs, left_factor_products(fold_fit[f][3], xs)):
            out[j] = float((p.T * x.right).sum())  # <s L R, mu> = sum((mu^T s L)^T * R)
    return out


def _measure(x: LowRank, pl: torch.Tensor, uz: torch.Tensor | None, vk: torch.Tensor | None, tot: float):
    """One model against one basis: (one-sided curve, two-sided curve or None, core or None).

    ``pl`` is :func:`left_factor_products`' U^T (s L) of the model.  A factored model without
    centering is measured from its factors (rows = diag(P R R^T P^T), core = P (R V)); otherwise
    the projection U^T X - U^T Z is formed.
    """
    if x.factored and uz is None:
        rows = ((pl @ (x.right @ x.right.T)) * pl).sum(dim=1)
        curve = heldout.curve_from_rows(rows, tot)
        if vk is None:
            return curve, None, None
        two, core = two_sided_from_core((pl @ (x.right @ vk)).cpu().double().numpy(), tot)
        return curve, two, core
    p = pl @ x.right if x.factored else pl
    p = p - uz if uz is not None else p
    curve = heldout.curve_from_projection(p, tot)
    if vk is None:
        return curve, None, None
    two, core = two_sided_curve(p, vk, tot)
    return curve, two, core




@dataclass
class MeasureContext:
    """Everything pass 2 measures the models against (built once, from pass 1's sums).

    Attributes
    ----------
    mode : {"out", "in"}
    n : int
        Models in the family.
    u : Tensor, shape (d, K)
        The shared basis.
    uz : Tensor (K, e) or None
        U^T Z, the centre projected (None without centering).
    vk : Tensor, shape (e, k2)
        The other side's basis (k2 = 0 when the two-sided metrics are skipped).
    z : Tensor (d, e) or None; zz : float or None
        The centre and its squared norm.
    folds : ndarray of int (N,) or None
    fold_fit : dict
        Per fold: (U_f, Z_f, U_f^T Z_f, mean mu_f, ||mu_f||^2, ||Z_f||^2), fitted without the fold.
    do_loo : bool
        Leave-one-out: each model's basis refitted from ``g`` and ``s`` downdated by it.
    g, s : Tensor (d, d) and (d, e) or None
        The raw Gram and sum (only for leave-one-out).
    center : str
    kk, kc, ka : int
        Basis width, coordinate block side, own-subspace width.
    seed : int
    keep_stack : bool
        Gather the models' stack (:attr:`Measured.stack`) for the model kernel and subsamples.
    """

    mode: str
    n: int
    u: torch.Tensor
    uz: torch.Tensor | None
    vk: torch.Tensor
    z: torch.Tensor | None
    zz: float | None
    folds: np.ndarray | None
    fold_fit: dict
    do_loo: bool
    g: torch.Tensor | None
    s: torch.Tensor | None
    center: str
    kk: int
    kc: int
    ka: int
    seed: int
    keep_stack: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return self.u.dtype

    @property
    def device(self) -> torch.device:
        return self.u.device


@dataclass
class Measured:
    """The rows pass 2 measured, for the models in ``index`` (in that order).

    ``rows`` maps ``one``, ``two``, ``kfold``, ``loo`` (captured-energy curves), ``coords``
    (kc * kc), ``norms2``, and ``kc``, ``ke``, ``lc``, ``le`` (mean-only captured and error, k-fold
    and leave-one-out) to arrays with one row per model; ``own`` holds each model's own basis and
    ``stack`` (when the context keeps it) each model flattened (:func:`~explorer.metrics.moments.stack_entry`).
    """

    index: list[int] = field(default_factory=list)
    rows: dict[str, list] = field(default_factory=dict)
    own: list[np.ndarray] = field(default_factory=list)
    stack: list[torch.Tensor] = field(default_factory=list)

    def absorb(self, other: Measured) -> Measured:
        """Append ``other``'s rows (other models); return self."""
        self.index.extend(other.index)
        for key, vals in other.rows.items():
            self.rows.setdefault(key, []).extend(vals)
        self.own.extend(other.own)
        self.stack.extend(other.stack)
        return self

    def table(self, key: str, n: int, width: int | None = None) -> np.ndarray:
        """Rows of ``key`` for all ``n`` models, by model index: shape (n,) or (n, width)."""
        out = np.zeros((n,) if width is None else (n, width))
        for i, row in zip(self.index, self.rows.get(key, [])):
            out[i] = row
        return out

    def _in_model_order(self, values: list, n: int) -> list:
        """``values`` (one per measured model, in ``index`` order) reordered by model index 0..n-1."""
        by = dict(zip(self.index, values))
        return [by[i] for i in range(n)]

    def own_bases(self, n: int) -> list[np.ndarray]:
        """Each model's own basis, in model order (every model must have been measured)."""
        return self._in_model_order(self.own, n)

    def stack_in_order(self, n: int) -> list[torch.Tensor]:
        """The models' stack in model order, each of shape (mn,) (empty when it was not kept)."""
        return self._in_model_order(self.stack, n) if self.stack else []


def measure_models(items: Iterable[tuple[int, LowRank]], ctx: MeasureContext) -> Measured:
    """Measure ``(model index, side matrix)`` pairs against ``ctx``; see :class:`Measured`."""
    res = Measured()
    rows = res.rows
    u, uz, vk, folds, fold_fit = ctx.u, ctx.uz, ctx.vk, ctx.folds, ctx.fold_fit
    for block in _blocks(items):
        xs = [x for _, x in block]
        # One product per block and basis (per-model products are memory-bound); factored
        # models stay factored: U^T (s L) (k x r), never the k x e projection.
        pu = left_factor_products(u, xs)
        pf = _fold_products(block, folds, fold_fit) if folds is not None else None
        xm = _fold_mean_inners(block, folds, fold_fit) if folds is not None else None
        for j, (i, x) in enumerate(block):
            res.index.append(i)
            norm2 = heldout.centered_norm2(x, ctx.z, ctx.zz)
            one, two, core = _measure(x, pu[j], uz, vk, norm2)
            rows.setdefault("norms2", []).append(norm2)
            rows.setdefault("one", []).append(one)
            if two is not None:
                rows.setdefault("two", []).append(two)
                cblock = core[:ctx.kc, :ctx.kc] if ctx.mode == "out" else core[:ctx.kc, :ctx.kc].T
                rows.setdefault("coords", []).append(cblock.reshape(-1))
            if folds is not None:
                _, zf, uzf, muf, mmf, zzf = fold_fit[int(folds[i])]
                rows.setdefault("kfold", []).append(
                    _measure(x, pf[j], uzf, None, heldout.centered_norm2(x, zf, zzf))[0])
                captured, error = heldout.mean_only(x, muf, mmf, xm[j])
                rows.setdefault("kc", []).append(captured)
                rows.setdefault("ke", []).append(error)
            if ctx.do_loo:
                with stage("leave-one-out"):
                    f = x.gram_factor()
                    sl = ctx.s.clone()
                    x.add_to(sl, alpha=-1.0)
                    ul = refit_basis(centered_gram(ctx.g - f @ f.T, sl, ctx.n - 1, ctx.center), ctx.kk, seed=ctx.seed)
                    rows.setdefault("loo", []).append(
                        heldout.captured_curve(ul, x, center_matrix(sl, ctx.n - 1, ctx.center)))
                    captured, error = heldout.mean_only(x, sl / (ctx.n - 1))
                    rows.setdefault("lc", []).append(captured)
                    rows.setdefault("le", []).append(error)
            with stage("own subspaces"):
                res.own.append(x.left_basis(ctx.ka))
            if ctx.keep_stack:
                res.stack.append(stack_entry(x.dense()))
    return res
