"""Baselines that decide whether a spectrum shows real shared structure (DESIGN.md, "Baselines").

* Strength-matched Gaussian null (what it matches: :mod:`explorer.metrics.null_spec`): each draw
  samples the null Gram ``sum_t w_t W_d(f_t, I)`` from the Wishart factors of its terms, and its
  band holds the coverage it states (:func:`band_limits`).
* Marchenko-Pastur edge of that null (:func:`explorer.metrics.null_spec.mp_edge_evr`).
* Random-subspace expectation k/d.

Mean-only reconstruction of held-out models lives with the coverage code
(:mod:`explorer.metrics.heldout`), which has the fold means at hand.
"""
from __future__ import annotations

import numpy as np
import scipy.stats
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import symmetrize
from explorer.core.progress import ProgressFn
from explorer.engine.gram import sym_update_
from explorer.metrics.null_spec import NullSpec, mp_edge, mp_edge_evr, raw_energies
from explorer.metrics.results import NullBand

# Flops of all draws of one null (about 20 s on 2 cores): beyond it fewer draws are made, and the
# band says so (its coverage stays what it states: see band_limits).
NULL_FLOPS = 1.5e12
# Fewest draws a costly null is cut to (the user may ask for fewer).
MIN_DRAWS = 5
# Null draws are sampled and computed in float32: the band's own Monte Carlo spread (Tracy-Widom,
# ~1e-2 relative) dwarfs float32's 1e-6 (tests/test_nulls.py compares float64 on the same samples).
NULL_DTYPE = torch.float32
# Cumulative EVR of each draw kept for p-values of the top-k energy.
KEEP_COMPONENTS = 256
# Nominal coverage of every band: 5 % to 95 %.
LEVEL = 0.90
# Draws costlier than this (about 0.1 s here) report progress, one call each.
PROGRESS_FLOPS = 1e10
# Largest Gram side whose null draws also give the per-model fitted curve (eigenvectors: ~3x the cost).
FITTED_SIDE = 512


def _bartlett(d: int, dof: int, rng: np.random.Generator) -> np.ndarray:
    """A sample of W_d(dof, I): the Gram of a d x dof standard Gaussian matrix, shape (d, d)."""
    f = _wishart_factors(d, dof, 1, rng)[0]
    return f @ f.T


def affordable_draws(spec: NullSpec, draws: int) -> int:
    """Draws made of ``draws`` asked: all within :data:`NULL_FLOPS`, else as many as fit, at least
    :data:`MIN_DRAWS` (or ``draws``, if fewer were asked)."""
    if draws < 1:
        raise OptionError(f"null draws must be >= 1, got {draws}")
    fit = int(NULL_FLOPS // max(1.0, spec.flops_per_draw()))
    return int(min(draws, max(fit, MIN_DRAWS)))


def _wishart_factors(d: int, dof: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` independent F (count x d x min(dof, d)) with F F^T ~ W_d(dof, I): the Gaussian
    matrix itself when dof < d, else the Bartlett factor (lower-triangular, L_jj^2 ~ chi^2(dof - j),
    below the diagonal N(0, 1)), which costs d^2/2 numbers instead of d dof."""
    if dof < d:
        return rng.standard_normal((count, d, dof))
    low = np.tril(rng.standard_normal((count, d, d)), -1)
    idx = np.arange(d)
    low[:, idx, idx] = np.sqrt(rng.chisquare(dof - idx, size=(count, d)))
    return low


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
    # Bartlett: lower-triangular, L_jj^2 ~ chi^2(dof - j), below the diagonal N(0, 1).
    low = np.zeros((d, count, d), dtype=np.float32)
    ii, jj = np.tril_indices(d, -1)
    low[ii, :, jj] = _normal32(rng, (len(ii), count))
    idx = np.arange(d)
    low[idx, :, idx] = np.sqrt(rng.chisquare(dof - idx, size=(count, d))).T
    return low


def _raw_factor(spec: NullSpec, rng: np.random.Generator) -> np.ndarray:
    """Centring ``none``: Y (d x width) with Y Y^T one draw of the null Gram, model by model."""
    d, blocks = spec.d, []
    for f, idx in _by_dof(spec):
        if spec.factored:
            # (B A)(B A)^T = (B L)(B L)^T with L L^T = A A^T ~ W_f(e, I) (its Bartlett factor).
            blk = rng.standard_normal((len(idx), d, f)) @ _wishart_factors(f, spec.e, len(idx), rng)
            blocks.append(_rescaled(blk, spec.targets[idx]).transpose(1, 0, 2).reshape(d, -1))
        else:
            blk = _rescaled(_gaussian_columns(d, f, len(idx), rng), spec.targets[idx], (0, 2))
            blocks.append(blk.reshape(d, -1))
    if not blocks:
        return np.zeros((d, 0))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


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
    y = torch.from_numpy(_centred_dense(spec, rng) if spec.center != "none" else _raw_factor(spec, rng)).to(dtype)
    if not k_fitted:
        # Thin: the nonzero spectrum of Y Y^T is that of the small Y^T Y.  Only the upper block
        # triangle is computed (torch has no syrk; 3/8 of the product saved at side 4096), which
        # is all the eigensolver reads.
        side = y.T if y.shape[1] < spec.d else y
        g = torch.zeros(side.shape[0], side.shape[0], dtype=dtype)
        sym_update_(g, side)
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


def band_limits(a: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, str]:
    """Median and a prediction band of ``level`` coverage, per column of draws ``a`` (n x d).

    With n + 1 >= 2 / (1 - level) draws (19 for 90 %) the band is distribution-free: order
    statistics a and n + 1 - a, a = floor((1 - level)/2 (n + 1)), hold a new exchangeable draw (data
    under the null) with probability exactly (n + 1 - 2a) / (n + 1) >= level (91/101 at n = 100).
    With fewer draws it is the Gaussian prediction interval mean +- t_{n-1} sd sqrt(1 + 1/n), whose
    coverage is ``level`` when the column is Gaussian across draws (top-k energies are close to it:
    tests/test_nulls.py measures it).

    Returns
    -------
    median, lo, hi : ndarray, shape (d,)
    coverage : float
        What the band holds (0 for a single draw: no band).
    method : str
    """
    n = a.shape[0]
    med = np.median(a, axis=0)
    j = int(np.floor((1.0 - level) / 2.0 * (n + 1) + 1e-9))  # 0.05 * 20 is 0.999.. in floats
    if j >= 1:
        s = np.sort(a, axis=0)
        cov = (n + 1 - 2 * j) / (n + 1)
        return med, s[j - 1], s[n - j], float(cov), f"order statistics {j} and {n + 1 - j} of {n} draws"
    if n >= 2:
        t = float(scipy.stats.t.ppf(0.5 + level / 2.0, n - 1))
        half = t * a.std(axis=0, ddof=1) * np.sqrt(1.0 + 1.0 / n)
        mean = a.mean(axis=0)
        return med, np.clip(mean - half, 0.0, None), mean + half, float(level), f"t prediction interval from {n} draws"
    return med, a[0].copy(), a[0].copy(), 0.0, "one draw: no band"


def null_band(spec: NullSpec, draws: int = 100, seed: int = 0, k_fitted: int = 0,
              progress: ProgressFn | None = None) -> NullBand:
    """The null's median and band of its EVR and cumulative EVR curves, within the draw budget.

    ``k_fitted`` > 0 (at sides <= :data:`FITTED_SIDE`, where the eigenvectors are cheap) also keeps
    each draw's mean per-model in-sample captured energy at k = 1..k_fitted: the like-for-like
    companion of the fitted coverage curve (a mean over models, not a share of pooled energy).
    ``progress`` hears of each costly draw (seconds each at side 4096).
    """
    made = affordable_draws(spec, draws)
    k_fitted = k_fitted if spec.d <= FITTED_SIDE and not (spec.factored and spec.center != "none") else 0
    if not k_fitted:
        return band_from_eigenvalues(null_eigenvalues(spec, made, seed, progress=progress), mp_edge_evr(spec),
                                     spec.construction, draws)
    eig, fitted = null_eigenvalues(spec, made, seed, k_fitted=k_fitted, progress=progress)
    band = band_from_eigenvalues(eig, mp_edge_evr(spec), spec.construction, draws)
    band.fitted_draws = fitted
    return band


def band_from_eigenvalues(eig: np.ndarray, mp_edge_value: float, construction: str, asked: int | None = None) -> NullBand:
    """Summarise null eigenvalues (draws x d, descending) into a :class:`NullBand`."""
    tot = eig.sum(axis=1, keepdims=True)
    evr = np.divide(eig, tot, out=np.zeros_like(eig), where=tot > 0)
    cum = np.cumsum(evr, axis=1)
    em, el, eh, cov, how = band_limits(evr)
    cm, cl, ch, _, _ = band_limits(cum)
    n = int(eig.shape[0])
    return NullBand(em, el, eh, np.minimum(cm, 1.0), cl, np.minimum(ch, 1.0), float(mp_edge_value), n,
                    int(asked if asked is not None else n), float(cov), how, construction,
                    cum[:, :KEEP_COMPONENTS].copy())


def model_null_band(centered: np.ndarray, mn: int, center: bool, draws: int = 100, seed: int = 0) -> NullBand:
    """Null band of the model-mode kernel K_ij = <Z_i, Z_j> for Gaussian Z_i with mn entries each.

    With Z_i = sigma_i X_i (X_i standard), K = D X X^T D for D = diag(sigma) and
    X X^T ~ W_N(mn, I): one N x N Bartlett sample per draw, never an mn-long vector.  Without
    centring each model is rescaled to exactly its norm; with it, the strengths come from the
    centred norms (:func:`explorer.metrics.null_spec.raw_energies`) and J = I - 11^T/N is applied
    on both sides, as the data's kernel is double-centred.
    """
    energies = raw_energies(np.asarray(centered, dtype=np.float64), "model" if center else "none",
                            np.full(len(centered), int(mn)))
    n = len(energies)
    made = int(min(draws, max(MIN_DRAWS, NULL_FLOPS // max(1.0, 2.0 * n**3))))
    if draws < 1:
        raise OptionError(f"null draws must be >= 1, got {draws}")
    sig = np.sqrt(energies / mn)
    j = np.eye(n) - 1.0 / n
    eig = np.empty((made, n))
    for t in range(made):
        rng = np.random.default_rng([seed, t])
        w = _bartlett(n, int(mn), rng)
        if not center:
            dg = np.sqrt(np.clip(np.diag(w), 1e-300, None))
            w = w / dg[:, None] / dg[None, :] * mn               # unit norms exactly, then D's
        k = sig[:, None] * w * sig[None, :]
        if center:
            k = j @ k @ j
        eig[t] = np.clip(np.linalg.eigvalsh(k)[::-1], 0.0, None)
    pop = np.linalg.eigvalsh(j @ np.diag(sig**2) @ j) if center else sig**2
    pop = np.clip(pop, 0.0, None)
    total = float(mn * pop.sum())
    edge = mp_edge(pop, np.ones(n, dtype=np.int64), int(mn)) / total if total > 0 else float("nan")
    how = ("each model its own Gaussian, strength from its centred norm, drawn raw and centred on the mean model"
           if center else "each model its own Gaussian of exactly its norm")
    return band_from_eigenvalues(eig, min(1.0, edge), f"Gaussian null: {how} ({n} models, {mn} entries)", draws)


def random_subspace_expectation(dim: int, ks: np.ndarray | int) -> np.ndarray:
    """Energy (and overlap) a uniformly random k-dim subspace of R^dim captures in expectation: k/dim.

    Parameters
    ----------
    dim : int
    ks : int or ndarray of int

    Returns
    -------
    ndarray, same shape as ``ks``
    """
    if dim < 1:
        raise OptionError(f"dimension must be >= 1, got {dim}")
    return np.minimum(np.asarray(ks, dtype=float) / dim, 1.0)
