"""Draws of the strength-matched Gaussian null: one seeded sample of the null Gram's spectrum at a time.

What a draw must match is :class:`~explorer.metrics.null_spec.NullSpec`; how draws become a band
of stated coverage is :mod:`explorer.metrics.baselines`.  Every draw is exact in law (no pooling,
no approximation): Gaussian models side by side (a staircase whose first d columns are Bartlett's
R, :func:`_staircase`), Bartlett factors for models wider than the Gram's side, LoRA products
through the Bartlett factor of A A^T, and centred draws made raw, centred and rescaled as the
data was.  Samples are float32 (:data:`NULL_DTYPE`).
"""
from __future__ import annotations

import numpy as np
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import symmetrize
from explorer.core.progress import ProgressFn
from explorer.engine.gram import sym_update_
from explorer.metrics.null_spec import NullSpec

# Null draws are sampled and computed in float32: the band's own Monte Carlo spread (Tracy-Widom,
# ~1e-2 relative) dwarfs float32's 1e-6 (tests/test_nulls.py compares float64 on the same samples).
NULL_DTYPE = torch.float32
# Draws costlier than this (about 0.1 s here) report progress, one call each.
PROGRESS_FLOPS = 1e10


def bartlett(d: int, dof: int, rng: np.random.Generator) -> np.ndarray:
    """A sample of W_d(dof, I): the Gram of a d x dof standard Gaussian matrix, shape (d, d)."""
    f = _wishart_factors(d, dof, 1, rng)[0]
    return f @ f.T


def _fill_bartlett(low: np.ndarray, dof: int, rng: np.random.Generator, normal) -> np.ndarray:
    """Fill ``low`` (count x d x d, zeros, any strides: a view is filled in place) with ``count``
    lower-triangular Bartlett factors L, L L^T ~ W_d(dof, I) for dof >= d: L_jj^2 ~ chi^2(dof - j),
    N(0, 1) below the diagonal from ``normal(shape)``; d^2/2 numbers instead of d dof.  Returns ``low``."""
    count, d, _ = low.shape
    ii, jj = np.tril_indices(d, -1)
    low[:, ii, jj] = normal((count, len(ii)))
    idx = np.arange(d)
    low[:, idx, idx] = np.sqrt(rng.chisquare(dof - idx, size=(count, d)))
    return low


def _wishart_factors(d: int, dof: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` independent F (count x d x min(dof, d)) with F F^T ~ W_d(dof, I), float64: the
    Gaussian matrix itself when dof < d, else the Bartlett factor (:func:`_fill_bartlett`)."""
    if dof < d:
        return rng.standard_normal((count, d, dof))
    return _fill_bartlett(np.zeros((count, d, d)), dof, rng, rng.standard_normal)


def _rescaled(blk: np.ndarray, target: np.ndarray, axes: tuple[int, int] = (1, 2)) -> np.ndarray:
    """Blocks scaled in place so that each ||blk_i||^2 = target_i (blocks indexed by the axis not in
    ``axes``): each model's norm exactly (the law of Gaussian data given its norms, X / ||X||
    being independent of ||X||).  Norms are summed in float64 by slabs of models, so no temporary
    as large as the draw (131 MB at 500 rank-16 models of side 4096) is made."""
    model_axis = ({0, 1, 2} - set(axes)).pop()
    count = blk.shape[model_axis]
    per_model = blk.size // max(count, 1)
    step = max(1, (16 << 20) // max(8 * per_model, 1))
    nf = np.empty(count)
    for a in range(0, count, step):
        part = np.take(blk, np.arange(a, min(a + step, count)), axis=model_axis).astype(np.float64)
        nf[a:a + step] = (part * part).sum(axis=axes)
    scale = np.sqrt(np.divide(target, nf, out=np.ones_like(nf), where=nf > 0)).astype(blk.dtype)
    shape = [1, 1, 1]
    shape[model_axis] = -1
    blk *= scale.reshape(shape)
    return blk


def _by_dof(spec: NullSpec):
    """(dof, indices of the null models with it): models of one rank are drawn in one batch."""
    for f in np.unique(spec.dof):
        yield int(f), np.flatnonzero(spec.dof == f)


def _normal32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 samples, seeded from ``rng`` (torch's generator: 3x numpy's rate)."""
    gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    return torch.randn(shape, generator=gen, dtype=torch.float32).numpy()


def _gaussian_columns(d: int, dof: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` factors F_i with F_i F_i^T ~ W_d(dof, I), laid out d x count x min(dof, d) so that a
    reshape (no copy) puts them side by side.  Samples are float32: the band's Monte Carlo spread
    (~1e-2) dwarfs their rounding, and generating them is most of a small null's cost."""
    if dof < d:
        return _normal32(rng, (d, count, dof))
    # Laid out d x count x d (side by side after a reshape), filled through a model-first view.
    low = np.zeros((d, count, d), dtype=np.float32)
    _fill_bartlett(low.transpose(1, 0, 2), dof, rng, lambda shape: _normal32(rng, shape))
    return low


def _staircase(spec: NullSpec, rng: np.random.Generator) -> np.ndarray:
    """Centring ``none``, every model narrower than d: Y (d x width) whose first m = min(d, width)
    columns are upper triangular, each model at exactly its norm.

    Exact in law, and those columns' share of the Gram costs a third (:func:`sym_update_`'s
    ``upper``): the models' Gaussian columns side by side are G = [G_1 G_2], G_1 the first m;
    G_1 = Q R with R upper triangular (R_jj ~ chi(d - j), N(0, 1) above the diagonal: the transpose
    of :func:`_fill_bartlett`'s factor of G_1^T G_1 ~ W_m(d, I), made in place in the draw's buffer)
    and Q Haar, independent of R; Q^T G_2 is again Gaussian and independent of R.  So Q^T G has
    the law of [R G_2], with G's column norms (all the rescaling reads) and G G^T's spectrum.
    """
    d = spec.d
    widths = _block_widths(spec)
    w = int(widths.sum())
    y = _normal32(rng, (d, w))
    m = min(d, w)
    torch.from_numpy(y)[:, :m].triu_()
    j = np.arange(m)
    y[j, j] = np.sqrt(rng.chisquare(d - j)).astype(np.float32)
    # Each model rescaled to exactly its norm: column norms in float64, 16 MB at a time.  Not
    # through _rescaled: its per-model slabs of this layout reduce at half this speed (0.07 vs
    # 0.04 s at 4096 x 8000), 15 % of a 1024-side draw.
    step = max(1, (2 << 20) // d)
    cols = np.concatenate([(y[:, a:a + step].astype(np.float64) ** 2).sum(axis=0) for a in range(0, w, step)])
    norms = np.add.reduceat(cols, np.concatenate([[0], np.cumsum(widths)[:-1]]))
    targets = np.concatenate([spec.targets[idx] for _, idx in _by_dof(spec)])
    scale = np.sqrt(np.divide(targets, norms, out=np.ones_like(norms), where=norms > 0))
    y *= np.repeat(scale, widths).astype(np.float32)[None, :]
    return y


def _raw_factor(spec: NullSpec, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Centring ``none``: Y (d x width) with Y Y^T one draw of the null Gram, model by model, and
    how many of its first columns are upper triangular (:func:`_staircase`; 0 otherwise)."""
    d, blocks = spec.d, []
    if not spec.factored and len(spec.dof) and int(spec.dof.max()) < d:
        y = _staircase(spec, rng)
        return y, min(d, y.shape[1])
    for f, idx in _by_dof(spec):
        if spec.factored:
            # (B A)(B A)^T = (B L)(B L)^T with L L^T = A A^T ~ W_f(e, I) (its Bartlett factor).
            blk = rng.standard_normal((len(idx), d, f)) @ _wishart_factors(f, spec.e, len(idx), rng)
            blocks.append(_rescaled(blk, spec.targets[idx]).transpose(1, 0, 2).reshape(d, -1))
        else:
            blk = _rescaled(_gaussian_columns(d, f, len(idx), rng), spec.targets[idx], (0, 2))
            blocks.append(blk.reshape(d, -1))
    if not blocks:
        return np.zeros((d, 0)), 0
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)), 0


def _centred_dense(spec: NullSpec, rng: np.random.Generator) -> np.ndarray:
    """Dense models, centred: Y = [alpha_i (X_i - Z)] (d x N e), each block at its centred norm."""
    d, e = spec.d, spec.e
    x = _normal32(rng, (d, len(spec.dof), e))
    x *= np.sqrt(spec.weights).astype(np.float32)[None, :, None]
    x -= x.mean(axis=1, keepdims=True) if spec.center == "model" else x.mean(axis=(1, 2), keepdims=True)
    return _rescaled(x, spec.targets, (0, 2)).reshape(d, -1)


def _centred_factored_gram(spec: NullSpec, rng: np.random.Generator, dtype: torch.dtype) -> torch.Tensor:
    """LoRA products, centred: sum_i alpha_i^2 (X_i - Z)(X_i - Z)^T with X_i = sigma_i B_i A_i kept
    factored, = Y Y^T - Z S^T - S Z^T + (sum alpha^2) Z Z^T with S = sum_i alpha_i^2 X_i (d x e)."""
    d, e, n = spec.d, spec.e, len(spec.dof)
    groups: list = []
    for f, idx in _by_dof(spec):
        b = np.sqrt(spec.weights[idx])[:, None, None] * rng.standard_normal((len(idx), d, f))
        groups.append((idx, b, rng.standard_normal((len(idx), f, e))))
    mean = sum(np.einsum("cdf,cfe->de", b, a) for _, b, a in groups) / n          # mean product, d x e
    z = mean if spec.center == "model" else np.repeat(mean.mean(axis=1, keepdims=True), e, axis=1)
    zz = float((z * z).sum())
    blocks, ssum, alpha_total = [], np.zeros((d, e)), 0.0
    for idx, b, a in groups:
        aat = a @ a.transpose(0, 2, 1)
        own = np.einsum("cfg,cfg->c", b.transpose(0, 2, 1) @ b, aat)              # ||B A||^2
        cross = np.einsum("cfe,cfe->c", b.transpose(0, 2, 1) @ z, a)               # <B A, Z>
        alpha2 = spec.targets[idx] / np.maximum(own - 2.0 * cross + zz, 1e-300)
        right = a if e <= a.shape[1] else np.linalg.cholesky(aat)     # (B L)(B L)^T = B A A^T B^T
        blocks.append(np.sqrt(alpha2)[:, None, None] * (b @ right))
        ssum += np.einsum("c,cdf,cfe->de", alpha2, b, a)
        alpha_total += float(alpha2.sum())
    yt, zt, st = (torch.from_numpy(t).to(dtype) for t in (np.concatenate([b.transpose(1, 0, 2).reshape(d, -1) for b in blocks], axis=1), z, ssum))
    cross_t = zt @ st.T
    return yt @ yt.T - cross_t - cross_t.T + alpha_total * (zt @ zt.T)


def _block_widths(spec: NullSpec) -> np.ndarray:
    """Columns of each null model's block in the draw's Y, in Y's order (Gaussian-term draws)."""
    if spec.center != "none":
        return np.full(len(spec.dof), spec.e)
    side = min(spec.d, spec.e) if spec.factored else spec.d
    return np.concatenate([np.full(len(idx), min(f, side)) for f, idx in _by_dof(spec)])


def _descending(vals: torch.Tensor) -> np.ndarray:
    """Ascending eigenvalues from torch as descending float64, clipped at 0 (negatives are rounding)."""
    return np.clip(vals.double().numpy()[::-1], 0.0, None)


def _draw(spec: NullSpec, rng: np.random.Generator, dtype: torch.dtype, k_fitted: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One draw: descending eigenvalues of the null Gram (at most d), and when ``k_fitted`` > 0 the
    mean over null models of their in-sample captured energy ||U_k^T X_i||^2 / ||X_i||^2, k = 1..k_fitted
    (each block's Gram is its model's, so U^T block has the model's captured energy)."""
    if spec.center != "none" and spec.factored:
        g, y = _centred_factored_gram(spec, rng, dtype), None
        return _descending(torch.linalg.eigvalsh(symmetrize(g))), None
    y, upper = (_centred_dense(spec, rng), 0) if spec.center != "none" else _raw_factor(spec, rng)
    y = torch.from_numpy(y).to(dtype)
    if not k_fitted:
        # Thin: the nonzero spectrum of Y Y^T is that of the small Y^T Y, or, for a staircase
        # (its rows below the width are zero), of R R^T with R its top square.  Only the upper
        # block triangle is computed (torch has no syrk; 3/8 of the product saved at side 4096),
        # which is all the eigensolver reads.
        thin = y.shape[1] < spec.d
        side = (y[:y.shape[1]] if upper else y.T) if thin else y
        g = torch.zeros(side.shape[0], side.shape[0], dtype=dtype)
        sym_update_(g, side, upper=upper)
        return _descending(torch.linalg.eigvalsh(g, UPLO="U")), None
    vals, vecs = torch.linalg.eigh(symmetrize(y @ y.T))
    kk = min(k_fitted, spec.d)
    proj = (vecs[:, -kk:].flip(-1).T @ y).double().numpy() ** 2          # (k, width)
    widths = _block_widths(spec)
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    per_model = np.add.reduceat(proj, starts, axis=1)                     # (k, models)
    norms = np.add.reduceat((y.double().numpy() ** 2).sum(axis=0), starts)
    captured = np.cumsum(per_model, axis=0) / np.where(norms > 0, norms, 1.0)
    return _descending(vals), captured.mean(axis=1)


def null_eigenvalues(spec: NullSpec, draws: int, seed: int = 0, dtype: torch.dtype | None = None,
                     k_fitted: int = 0, progress: ProgressFn | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the null Gram for ``draws`` seeded draws (no budget applied here).

    Parameters
    ----------
    spec : NullSpec
    draws : int
    seed : int
    dtype : torch dtype, optional
        Of the Gram product and eigenvalues (default :data:`NULL_DTYPE`); the samples are the
        same numbers either way.
    k_fitted : int
        When > 0, also each draw's mean per-model in-sample captured energy at k = 1..k_fitted.
    progress : callable(done, total, label), optional
        Called after each draw when draws are costly (:data:`PROGRESS_FLOPS`).

    Returns
    -------
    ndarray, shape (draws, d)
        Descending eigenvalues per draw; with ``k_fitted``, also an ndarray (draws, k_fitted).
    """
    if draws < 1:
        raise OptionError(f"null draws must be >= 1, got {draws}")
    d = spec.d
    dtype = NULL_DTYPE if dtype is None else dtype
    out = np.zeros((draws, d))
    fitted = np.full((draws, min(k_fitted, d)), np.nan)
    report = progress if progress is not None and spec.flops_per_draw() >= PROGRESS_FLOPS else None
    for t in range(draws):
        vals, curve = _draw(spec, np.random.default_rng([seed, t]), dtype, k_fitted)
        out[t, :len(vals[:d])] = vals[:d]
        if curve is not None:
            fitted[t] = curve
        if report is not None:
            report(t + 1, draws, "Gaussian null draws")
    return (out, fitted) if k_fitted else out
