"""Model-mode metrics: everything follows from the raw N x N kernel K_ij = <W_i, W_j>_F.

The pipeline hands over the decomposition's own K (:func:`explorer.engine.model_gram.model_kernel`),
so a model-mode analysis reads every model once; only without it is K built here.  Held-out
coverage (k-fold, leave-one-out), the mean-only baseline and the null band all come from K
(:func:`explorer.metrics.heldout.kernel_heldout`, :func:`explorer.metrics.baselines.model_null_band`).
"""
from __future__ import annotations

import numpy as np
import torch

from explorer.core.errors import InputError
from explorer.core.linalg import double_center
from explorer.engine.model_gram import model_kernel
from explorer.metrics import baselines, heldout
from explorer.metrics.results import HeldOut, Metrics, NullBand, kernel_scores

# Leave-one-out runs (loo=auto) while N^4 stays within this many flops.
LOO_FLOPS = 2e10


def set_null(res: Metrics, band: NullBand) -> None:
    """Store a null band and its MP edge on a Metrics."""
    res.null, res.mp_edge_evr = band, band.mp_edge_evr


def model_mode_metrics(open_stream, n, shape, basis, so, mopts, progress, device, dtype, kernel=None) -> Metrics:
    """Model mode: everything follows from the N x N kernel of the models (given, or one pass)."""
    m, ncol = shape
    notes: list[str] = []
    raw = _raw_kernel(open_stream, n, shape, so, mopts, progress, kernel)
    kmat = double_center(raw) if so.center != "none" else raw
    kk = basis.shape[1]
    scores, curves = kernel_scores(kmat, mopts.k_coord)
    res = Metrics(norms2=np.diag(kmat).copy(), energy_one=curves[:, :kk], scores=scores, kernel=kmat, notes=notes)
    idx = np.arange(n)
    if mopts.folds >= 2 and n >= 2:
        folds = heldout.fold_assignment(n, mopts.folds, mopts.seed)
        ho = res.heldout = HeldOut(folds=folds, kfold=np.zeros((n, kk)), mean_kfold_captured=np.zeros(n),
                                   mean_kfold_error=np.zeros(n))
        for f in range(int(folds.max()) + 1):
            test, train = idx[folds == f], idx[folds != f]
            ho.kfold[test] = heldout.kernel_heldout(raw, train, test, kk, so.center)
            ho.mean_kfold_captured[test], ho.mean_kfold_error[test] = _kernel_mean_only(raw, train, test)
    do_loo = n >= 3 and (mopts.loo == "on" or (mopts.loo == "auto" and n**4 <= LOO_FLOPS))
    if do_loo:
        ho = res.heldout = res.heldout or HeldOut()
        ho.loo, ho.mean_loo_captured, ho.mean_loo_error = np.zeros((n, kk)), np.zeros(n), np.zeros(n)
        for i in range(n):
            train, test = idx[idx != i], np.array([i])
            ho.loo[i] = heldout.kernel_heldout(raw, train, test, kk, so.center)[0]
            ho.mean_loo_captured[test], ho.mean_loo_error[test] = _kernel_mean_only(raw, train, test)
    if mopts.null_draws:
        band = baselines.model_null_band(res.norms2, m * ncol, so.center != "none", mopts.null_draws, mopts.seed)
        if band.draws < band.draws_asked:
            notes.append(f"Gaussian null: {band.draws} draws of {band.draws_asked} asked ({n} x {n} kernels are "
                         f"costly); its band is a {band.band_method}")
        set_null(res, band)
    notes.append("model x model, group and two-sided metrics are defined for out/in modes only")
    return res


def _raw_kernel(open_stream, n, shape, so, mopts, progress, kernel) -> np.ndarray:
    """K_ij = <W_i, W_j>_F of the raw models, shape (N, N), float64 (a copy).

    The decomposition's own kernel when given: the pipeline builds K once
    (:func:`explorer.engine.model_gram.model_kernel`), so the models are not read again.
    Otherwise the engine builds it from ``open_stream``: dense models stacked, or by row-blocks
    of at most half of max_memory_mb (one pass per block); LoRA factors in one pass.
    """
    if kernel is None:
        label = None if progress is None else (lambda d, t, what: progress(d, t, f"metrics: {what}"))
        budget = mopts.max_memory_mb * 2**20
        kernel = model_kernel(open_stream, n, shape, so, label, block_bytes=max(1, budget // 2))
    if isinstance(kernel, torch.Tensor):
        raw = kernel.detach().cpu().double().numpy().copy()
    else:
        raw = np.array(kernel, dtype=np.float64)
    if raw.shape != (n, n):
        raise InputError(f"model kernel has shape {raw.shape}, expected {(n, n)}")
    return raw


def _kernel_mean_only(raw: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-only baseline from the raw kernel: <x_j, mu>^2 / (|mu|^2 |x_j|^2) and |x_j - mu| / |x_j|."""
    xm = raw[np.ix_(test, train)].mean(axis=1)
    mm = raw[np.ix_(train, train)].mean()
    xx = raw[test, test]
    with np.errstate(invalid="ignore", divide="ignore"):
        cap = np.where((xx > 0) & (mm > 0), xm**2 / (mm * xx), 0.0)
        err = np.where(xx > 0, np.sqrt(np.clip(xx - 2 * xm + mm, 0, None) / xx), 0.0)
    return np.clip(cap, 0.0, 1.0), err
