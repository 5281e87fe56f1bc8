"""Compute :class:`~explorer.metrics.results.Metrics` by two more streaming passes over the models.

Pass 1 accumulates, per fold and per metadata group, the Gram and sum of the side matrices
(:class:`~explorer.metrics.heldout.PartitionGrams`) and the Gram of the other side; the fold and group
bases then come from downdated sums, without reading anything again.  Pass 2 reads each model
once more and measures it against the shared basis (in-sample energies, coordinates), against
the basis fitted without its fold (k-fold) or without itself (leave-one-out, downdating the
Gram by that one model), against the held-out mean (mean-only baseline), and computes its own
top-k subspace (model x model angles).  Memory: O(folds * d^2 + groups * d^2 + e^2 + one model),
independent of N, plus the N x mn model stack only when it is small.  Each model is a
:class:`~explorer.core.lowrank.LowRank` side matrix, kept factored for LoRA updates.

Pass 2 projects blocks of models at once (one product per block and basis: per-model products
are memory-bound).  Fold bases are refitted by :func:`explorer.core.topk.refit_basis` (randomized
above 2048 rows, accuracy stated there).  Model mode needs no pass of its own
(:mod:`explorer.metrics.model_mode`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from explorer.core.backend import pick_device, pick_dtype
from explorer.core.errors import InputError
from explorer.core.linalg import (
    center_matrix,
    centered_gram,
    eigh_top,
    subtract_center,
)
from explorer.core.progress import ProgressFn
from explorer.core.threads import is_small, single_threaded
from explorer.core.timing import stage
from explorer.core.topk import refit_basis
from explorer.metrics import angles, baselines, null_spec, permutation, subsample
from explorer.metrics.model_mode import LOO_FLOPS, model_mode_metrics, set_null
from explorer.metrics.moments import ModelMoments, stack_kernel
from explorer.metrics.results import (
    Groups,
    HeldOut,
    Metrics,
    MetricsOptions,
    NullBand,
    Overlaps,
    kernel_scores,
)
from explorer.metrics.local_passes import LocalPasses, Passes
from explorer.metrics.measure import MeasureContext
from explorer.metrics.sums import SideSums, plan_sums

def compute_metrics(
    open_stream: Callable[[], Iterable[torch.Tensor]],
    n_models: int,
    shape: tuple[int, int],
    basis: np.ndarray,
    spectral_options,
    mopts: MetricsOptions,
    labels: Sequence[Mapping[str, str]] = (),
    progress: ProgressFn | None = None,
    null_ranks: Sequence[int] | None = None,
    null_widths: Sequence[int] | None = None,
    *,
    kernel: np.ndarray | torch.Tensor | None = None,
    sums: SideSums | None = None,
    passes: Passes | None = None,
) -> Metrics:
    """Compute the metrics of one layer group.

    Parameters
    ----------
    open_stream : callable() -> iterable of Tensor (m, n), LowRank or (B, A, scale)
        Starts a fresh pass over the models (called twice; not at all in model mode when
        ``kernel`` is given).  LoRA updates are kept factored.
    n_models : int
    shape : (m, n)
    basis : ndarray, shape (d, K)
        The engine's shared basis for ``spectral_options.mode`` (d = m, n or N).
    spectral_options : SpectralOptions
        Mode, centering, dtype and device of the decomposition.
    mopts : MetricsOptions
    labels : sequence of mapping, one per model
        Metadata labels, for group x group angles.
    progress : callable(done, total, label), optional
        Called once per model read, in each pass.
    null_ranks : sequence of int, optional
        LoRA rank of each model when the matrices are products s_i B_i A_i: the null then uses
        Gaussian factors of those ranks instead of dense Gaussian matrices.
    null_widths : sequence of int, optional
        True columns of each model when LoRA factors of mixed rank were zero-padded (views A
        and B): the null gives each model its own rank, not the padded one.
    kernel : ndarray or Tensor, shape (N, N), optional
        Model mode: the raw (uncentered) kernel K_ij = <W_i, W_j>_F the decomposition was
        computed from (:func:`explorer.engine.model_gram.model_kernel`); the models are then not
        read again.  Built from ``open_stream`` when omitted.
    sums : SideSums, optional
        Out/in modes: pass 1 already made (:func:`side_sums`, the pipeline's, which decomposed
        its Gram); only pass 2 then reads the models.
    passes : Passes, optional
        Out/in modes: what reads the models (default :class:`LocalPasses` over ``open_stream``;
        :class:`explorer.cluster.passes.ClusterPasses` measures shards on a Dask cluster).
    """
    # The decomposition read an unchosen mode as out (the engine sees no view): so do the metrics.
    spectral_options = spectral_options.resolved()
    device = pick_device(spectral_options.device)
    dtype = pick_dtype(spectral_options.dtype, device)
    with single_threaded(is_small(shape, n_models, device.type)):
        if spectral_options.mode == "model":
            return model_mode_metrics(open_stream, n_models, shape, basis, spectral_options, mopts, progress, device, dtype,
                               kernel)
        return _side_mode(open_stream, n_models, shape, basis, spectral_options, mopts, labels, progress, device,
                          dtype, null_ranks, sums, null_widths, passes)


def _side_mode(open_stream, n, shape, basis, so, mopts, labels, progress, device, dtype, null_ranks,
               sums: SideSums | None = None, null_widths: Sequence[int] | None = None,
               passes: Passes | None = None) -> Metrics:
    mode, center = so.mode, so.center
    m, ncol = shape
    d, e = (m, ncol) if mode == "out" else (ncol, m)
    if basis.shape[0] != d:
        raise InputError(f"basis has {basis.shape[0]} rows, the {mode}-mode side of {shape} has {d}")
    passes = passes or LocalPasses(open_stream, n, shape)
    if sums is None:
        sums = passes.sums(plan_sums(n, shape, so, mopts, labels, device, dtype), progress)
    g, s, parts, gparts, other = sums.gram, sums.side_sum, sums.parts, sums.gparts, sums.other
    folds, group_by, group_names = sums.folds, sums.group_by, sums.group_names
    notes, keep_stack, two_sided = list(sums.notes), sums.keep_stack, other is not None

    z = center_matrix(s, n, center)
    kk = basis.shape[1]
    v = torch.zeros(e, 0, dtype=dtype, device=device)
    if other is not None:
        with stage("other-side basis"):
            oth = other.flush()
            if z is not None:  # sum (X_i - Z)^T (X_i - Z): the other side of the same centering
                oth = subtract_center(oth, s.T, z.T, n)
            _, v = eigh_top(oth, kk)
    u = torch.as_tensor(basis, dtype=dtype, device=device)
    uz = u.T @ z if z is not None else None
    zz = float((z * z).sum()) if z is not None else None
    vk = v[:, :min(kk, v.shape[1])]
    ka = max(1, min(mopts.k_angles, kk, d))

    if folds is not None and center != "none" and n - int(np.bincount(folds).max()) < 2:
        # Centred on one training model, a fold's Gram is 0: its "basis" would be arbitrary.
        notes.append(f"held-out coverage skipped: with centring {center!r} each fold's fit needs at least 2 "
                     f"training models, and {n} models leave {n - int(np.bincount(folds).max())}")
        folds = None
    fold_fit = {}
    if folds is not None:
        with stage("k-fold bases"):
            for f in range(int(folds.max()) + 1):
                gf, sf, nf = parts.without(f, (g, s, n))
                uf = refit_basis(centered_gram(gf, sf, nf, center), kk, seed=mopts.seed)
                zf = center_matrix(sf, nf, center)
                muf = sf / nf
                fold_fit[f] = (uf, zf, uf.T @ zf if zf is not None else None, muf, float((muf * muf).sum()),
                               float((zf * zf).sum()) if zf is not None else None)
    # Nothing reads the fold Grams again: release them before pass 2 and the null.
    parts.release()
    do_loo = n >= 3 and (mopts.loo == "on" or (mopts.loo == "auto" and n * d**3 <= LOO_FLOPS))
    if mopts.loo == "on" and n < 3:
        notes.append("leave-one-out skipped: it needs at least 3 models")
    elif mopts.loo == "auto" and not do_loo and n >= 3:
        notes.append(f"leave-one-out skipped (loo=auto): {n} eigh of {d}x{d} is too costly; use loo='on'")

    # Pass 2: measure every model against the shared, fold and leave-one-out bases.
    k2 = min(kk, v.shape[1])
    kc = min(mopts.k_coord, k2)
    ctx = MeasureContext(mode, n, u, uz, vk, z, zz, folds, fold_fit, do_loo, g if do_loo else None,
                         s if do_loo else None, center, kk, kc, ka, mopts.seed, keep_stack)
    with stage("pass 2: measure models"):
        measured = passes.measure(ctx, progress)
    out = {key: measured.table(key, n, width) for key, width in
           (("one", kk), ("two", k2), ("kfold", kk), ("loo", kk))}
    coords = measured.table("coords", n, kc * kc)
    norms2 = measured.table("norms2", n)
    mean = {key: measured.table(key, n) for key in ("kc", "ke", "lc", "le")}
    own = measured.own_bases(n)
    stack = measured.stack_in_order(n)
    measured.stack.clear()

    if not norms2.any():
        notes.append(f"the family's energy is 0 after centring {center!r} (e.g. a single model, centred): "
                     "EVR, k(τ), captured energies and the null are undefined here")
    elif (zero := np.flatnonzero(norms2 <= 0)).size:
        # A zero model has no energy to capture: NaN, left out of every mean, rather than a 0 that
        # would pull the family's coverage down.
        for key in out:
            out[key][zero] = np.nan
        notes.append(f"{zero.size} model(s) are zero after centring (e.g. #{int(zero[0])}): their captured energies "
                     "are undefined (NaN) and left out of the means")
    ub = basis[:, :ka]
    res = Metrics(norms2=norms2, energy_one=out["one"], notes=notes)
    if two_sided:
        res.energy_two, res.coords, res.other_basis = out["two"], coords, v.cpu().double().numpy()
    with stage("overlaps"):
        res.overlaps = Overlaps(
            own=angles.overlap_matrix(own),
            vs_universal=angles.overlap_matrix(own, [ub])[:, 0],
            cosines=np.stack([_cosines_row(b, ub, ka) for b in own]),
        )
    notes.extend(_own_subspace_notes(own, ka))
    measured.own.clear()  # the models' own bases (131 MB at 500 rank-16 factors of side 4096) are done with
    own = None
    if folds is not None:
        res.heldout = HeldOut(folds=folds, kfold=out["kfold"], mean_kfold_captured=mean["kc"],
                              mean_kfold_error=mean["ke"])
    if do_loo:
        res.heldout = res.heldout or HeldOut()
        res.heldout.loo, res.heldout.mean_loo_captured, res.heldout.mean_loo_error = out["loo"], mean["lc"], mean["le"]
    moments = None  # each model's Gram, built once for the permutations and the subsamples
    if gparts is not None:
        gb = []
        with stage("group bases"):
            for c in range(len(group_names)):
                gg, sg, ng = gparts.cell(c)
                gb.append(eigh_top(centered_gram(gg, sg, ng, center), ka)[1].cpu().double().numpy())
        res.groups = Groups(by=group_by, names=group_names, bases=np.stack(gb), overlap=angles.overlap_matrix(gb),
                            vs_universal=angles.overlap_matrix(gb, [ub])[:, 0])
        if keep_stack and permutation.affordable(n, d, mopts.max_memory_mb * 2**20 // 8):
            with stage("group permutations"):
                moments = moments or ModelMoments.of([t.reshape(d, e) for t in stack])
                res.groups.permuted = permutation.permuted_group_overlaps(moments, sums.groups, len(group_names), ka,
                                                                          center, seed=mopts.seed)
        else:
            notes.append(f"group permutation test skipped: relabelling needs every model's {d}x{d} Gram in memory")
    if keep_stack and n >= 4 and permutation.affordable(n, d, mopts.max_memory_mb * 2**20 // 8):
        with stage("subsampling"):
            moments = moments or ModelMoments.of([t.reshape(d, e) for t in stack])
            res.stability = subsample.stability(moments, center, ka, 256, mopts.seed)
    elif n >= 4:
        notes.append(f"k(τ) against N and the scree's confidence band skipped: subsampling needs every model's "
                     f"{d}x{d} Gram in memory")
    if keep_stack:
        with stage("model kernel"):
            res.kernel = stack_kernel(stack, z).numpy()
            res.scores = kernel_scores(res.kernel, mopts.k_coord)[0]
    # The stack and the models' Grams are done with before the null draws (the largest of them).
    stack.clear()
    moments = None
    if mopts.null_draws and norms2.any():
        with stage("null"):
            set_null(res, side_null(norms2, d, e, center, mopts, null_ranks, null_widths, notes, k_fitted=kk,
                                    progress=progress))
    return res




def side_null(norms2: np.ndarray, d: int, e: int, center: str, mopts: MetricsOptions,
              ranks: Sequence[int] | None = None, widths: Sequence[int] | None = None,
              notes: list[str] | None = None, k_fitted: int = 0, progress: ProgressFn | None = None) -> NullBand:
    """The strength-matched Gaussian null of an out/in-mode analysis, from its models' norms.

    Parameters
    ----------
    norms2 : ndarray, shape (N,)
        ||X_i - Z||^2 after the data's centring.
    d, e : int
        Gram side and other side.
    center : {"none", "model", "vector"}
    mopts : MetricsOptions
        ``null_draws`` and ``seed``.
    ranks : sequence of int, optional
        LoRA products (view dW): each model's rank.
    widths : sequence of int, optional
        Zero-padded factors (views A, B of mixed rank): each model's true rank.
    notes : list of str, optional
        Gets a note when the budget cut the draws.
    k_fitted : int
        Also the null's per-model fitted curve at k = 1..k_fitted where cheap (:func:`baselines.null_band`).
    progress : callable(done, total, label), optional
        Hears of each costly null draw.
    """
    if ranks is not None:
        spec = null_spec.factored_null_spec(norms2, d, e, np.asarray(ranks, dtype=np.int64), center)
    else:
        spec = null_spec.dense_null_spec(norms2, d, e, center, None if widths is None else np.asarray(widths))
    band = baselines.null_band(spec, mopts.null_draws, mopts.seed, k_fitted, progress)
    if notes is not None and band.draws < band.draws_asked:
        notes.append(f"Gaussian null: {band.draws} draws of {band.draws_asked} asked ({d} x {d} Grams are costly); "
                     f"its band is a {band.band_method} and holds {100 * band.coverage:.0f} % of null spectra")
    return band


def _cosines_row(own: np.ndarray, ub: np.ndarray, ka: int) -> np.ndarray:
    """Principal cosines of one own subspace against the universal one, padded to ``ka`` with NaN
    (a model of rank < ka has fewer angles; a zero model has none)."""
    row = np.full(ka, np.nan)
    if own.shape[1]:
        cos = angles.principal_cosines(own, ub)
        row[:len(cos)] = cos
    return row


def _own_subspace_notes(own: Sequence[np.ndarray], ka: int) -> list[str]:
    """Say which own subspaces were truncated to their model's rank, and which models have none."""
    widths = np.array([b.shape[1] for b in own])
    notes = []
    zero = np.flatnonzero(widths == 0)
    if len(zero):
        notes.append(f"{len(zero)} model(s) are zero after centring (e.g. #{int(zero[0])}): they have no own "
                     "subspace, and their overlaps are undefined (NaN)")
    low = np.flatnonzero((widths > 0) & (widths < ka))
    if len(low):
        notes.append(f"own subspaces are truncated to each model's rank: {len(low)} model(s) have rank < {ka} "
                     f"(lowest {int(widths[low].min())}); their overlaps divide by the smaller dimension")
    return notes
