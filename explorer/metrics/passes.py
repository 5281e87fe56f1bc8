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

Model mode needs no pass of its own: everything follows from the raw N x N kernel, which the
pipeline hands over from the decomposition (``kernel=``); only without it is K built here, by the
engine's :func:`~explorer.engine.model_gram.model_kernel`.
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
    double_center,
    eigh_top,
    subtract_center,
)
from explorer.core.lowrank import as_lowrank
from explorer.core.progress import ProgressFn
from explorer.core.threads import single_threaded
from explorer.engine.gram import StackedGram
from explorer.engine.model_gram import model_kernel
from explorer.metrics import angles, baselines, heldout
from explorer.metrics.results import (
    Groups,
    HeldOut,
    Metrics,
    MetricsOptions,
    NullBand,
    Overlaps,
    kernel_scores,
    two_sided_curve,
)

_LOO_FLOPS = 2e10
#: Most groups a metadata column may split a family into for group x group overlaps (one Gram
#: per group is held); the app and the report offer only columns within 2..MAX_GROUPS.
MAX_GROUPS = 32
# Below this side, BLAS/LAPACK calls are too small to gain from threads (explorer.core.threads).
_SINGLE_THREAD_SIDE = 512


_AUTO_GROUP_COLUMNS = ("group", "task_group", "init_group", "task")


def _pick_groups(labels: Sequence[Mapping[str, str]], group_by: str, notes: list[str]):
    """Group index per model (or None) for the metadata column chosen by ``group_by``."""
    if group_by == "none":
        return None, None, []
    col = group_by
    if group_by == "auto":
        # The first label column that splits the family into 2..MAX_GROUPS groups.
        cols = set().union(*[set(lab) for lab in labels]) if labels else set()
        col = next((c for c in _AUTO_GROUP_COLUMNS if c in cols
                    and 2 <= len({lab.get(c) for lab in labels}) <= MAX_GROUPS), None)
        if col is None:
            return None, None, []
    values = [lab.get(col) for lab in labels]
    if any(v is None for v in values):
        notes.append(f"group angles skipped: metadata column {col!r} is missing for some models")
        return None, None, []
    names = sorted(set(values))
    if not 2 <= len(names) <= MAX_GROUPS:
        notes.append(f"group angles skipped: column {col!r} has {len(names)} values (need 2..{MAX_GROUPS})")
        return None, None, []
    return col, np.array([names.index(v) for v in values]), names


def _read(it: Iterable[torch.Tensor], n: int, progress: ProgressFn | None, label: str):
    count = 0
    for i, w in enumerate(it):
        if i >= n:
            raise InputError(f"the layer group yielded more than the {n} models it announced")
        count += 1
        yield i, w
        if progress:
            progress(i + 1, n, label)
    if count != n:
        raise InputError(f"expected {n} models, read {count}")


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
    *,
    kernel: np.ndarray | torch.Tensor | None = None,
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
    kernel : ndarray or Tensor, shape (N, N), optional
        Model mode: the raw (uncentered) kernel K_ij = <W_i, W_j>_F the decomposition was
        computed from (:func:`explorer.engine.model_gram.model_kernel`); the models are then not
        read again.  Built from ``open_stream`` when omitted.
    """
    # The decomposition read an unchosen mode as out (the engine sees no view): so do the metrics.
    spectral_options = spectral_options.resolved()
    device = pick_device(spectral_options.device)
    dtype = pick_dtype(spectral_options.dtype, device)
    small = device.type == "cpu" and max(shape) <= _SINGLE_THREAD_SIDE and n_models <= _SINGLE_THREAD_SIDE
    with single_threaded(small):
        if spectral_options.mode == "model":
            return _model_mode(open_stream, n_models, shape, basis, spectral_options, mopts, progress, device, dtype,
                               kernel)
        return _side_mode(open_stream, n_models, shape, basis, spectral_options, mopts, labels, progress, device,
                          dtype, null_ranks)


def _side_mode(open_stream, n, shape, basis, so, mopts, labels, progress, device, dtype, null_ranks) -> Metrics:
    mode, center = so.mode, so.center
    m, ncol = shape
    d, e = (m, ncol) if mode == "out" else (ncol, m)
    if basis.shape[0] != d:
        raise InputError(f"basis has {basis.shape[0]} rows, the {mode}-mode side of {shape} has {d}")
    notes: list[str] = []
    budget = mopts.max_memory_mb * 2**20
    per_cell = (d * d + d * e) * torch.tensor([], dtype=dtype).element_size()

    folds = None
    if mopts.folds >= 2 and n >= 2:
        folds = heldout.fold_assignment(n, mopts.folds, mopts.seed)
        if (folds.max() + 1) * per_cell > budget:
            notes.append(f"k-fold coverage skipped: {folds.max() + 1} fold Grams of {d}x{d} exceed max_memory_mb")
            folds = None
    elif mopts.folds >= 2:
        notes.append("held-out coverage skipped: it needs at least 2 models")
    group_by, groups, group_names = _pick_groups(labels, mopts.group_by, notes) if labels else (None, None, [])
    if groups is not None and len(group_names) * per_cell > budget:
        notes.append(f"group angles skipped: {len(group_names)} group Grams exceed max_memory_mb")
        group_by, groups, group_names = None, None, []
    keep_stack = n * m * ncol * 8 <= budget // 4
    elt = torch.tensor([], dtype=dtype).element_size()
    two_sided = e * e * elt <= budget
    if not two_sided:
        notes.append(f"two-sided energies and coordinates skipped: the {e}x{e} other-side Gram exceeds max_memory_mb")

    def models(label):
        for i, item in _read(open_stream(), n, progress, label):
            x = as_lowrank(item, i, shape, dtype, device, dense=True)
            yield i, (x if mode == "out" else x.T)

    # Pass 1: per-fold and per-group Gram sums, the other side's Gram, the small model stack.
    parts = heldout.PartitionGrams(folds if folds is not None else np.zeros(n, int), d, e, dtype, device)
    gparts = heldout.PartitionGrams(groups, d, e, dtype, device) if groups is not None else None
    other = StackedGram(e, dtype, device) if two_sided else None
    stack = []
    for i, x in models("metrics: fitting folds"):
        parts.add(i, x)
        if gparts is not None:
            gparts.add(i, x)
        if other is not None:
            other.add(x.cogram_factor())
        if keep_stack:
            stack.append(x.dense().reshape(-1).cpu().double())

    g, s, _ = parts.total()
    z = center_matrix(s, n, center)
    kk = basis.shape[1]
    v = torch.zeros(e, 0, dtype=dtype, device=device)
    if other is not None:
        oth = other.flush()
        if z is not None:  # sum (X_i - Z)^T (X_i - Z): the other side of the same centering
            oth = subtract_center(oth, s.T, z.T, n)
        _, v = eigh_top(oth, kk)
    u = torch.as_tensor(basis, dtype=dtype, device=device)
    uz = u.T @ z if z is not None else None
    ka = max(1, min(mopts.k_angles, kk, d))

    fold_fit = {}
    if folds is not None:
        for f in range(int(folds.max()) + 1):
            gf, sf, nf = parts.without(f)
            _, uf = eigh_top(centered_gram(gf, sf, nf, center), kk)
            zf = center_matrix(sf, nf, center)
            fold_fit[f] = (uf, zf, uf.T @ zf if zf is not None else None, sf / nf)
    do_loo = n >= 3 and (mopts.loo == "on" or (mopts.loo == "auto" and n * d**3 <= _LOO_FLOPS))
    if mopts.loo == "on" and n < 3:
        notes.append("leave-one-out skipped: it needs at least 3 models")
    elif mopts.loo == "auto" and not do_loo and n >= 3:
        notes.append(f"leave-one-out skipped (loo=auto): {n} eigh of {d}x{d} is too costly; use loo='on'")

    # Pass 2: measure every model against the shared, fold and leave-one-out bases.
    k2 = min(kk, v.shape[1])
    out = {key: np.zeros((n, width)) for key, width in
           (("one", kk), ("two", k2), ("kfold", kk), ("loo", kk))}
    kc = min(mopts.k_coord, k2)
    coords = np.zeros((n, kc * kc))
    norms2 = np.zeros(n)
    mean = {key: np.zeros(n) for key in ("kc", "ke", "lc", "le")}
    own = []
    for i, x in models("metrics: measuring models"):
        norms2[i] = heldout.centered_norm2(x, z)
        out["one"][i] = heldout.captured_curve(u, x, z, uz)
        out["two"][i], core = two_sided_curve(heldout.projection(u, x, z, uz), v[:, :k2], norms2[i])
        block = core[:kc, :kc] if mode == "out" else core[:kc, :kc].T
        coords[i] = block.reshape(-1)
        if folds is not None:
            uf, zf, uzf, muf = fold_fit[int(folds[i])]
            out["kfold"][i] = heldout.captured_curve(uf, x, zf, uzf)
            mean["kc"][i], mean["ke"][i] = heldout.mean_only(x, muf)
        if do_loo:
            f = x.gram_factor()
            sl = s.clone()
            x.add_to(sl, alpha=-1.0)
            _, ul = eigh_top(centered_gram(g - f @ f.T, sl, n - 1, center), kk)
            out["loo"][i] = heldout.captured_curve(ul, x, center_matrix(sl, n - 1, center))
            mean["lc"][i], mean["le"][i] = heldout.mean_only(x, sl / (n - 1))
        own.append(x.left_basis(ka))

    ub = basis[:, :ka]
    res = Metrics(norms2=norms2, energy_one=out["one"], notes=notes)
    if two_sided:
        res.energy_two, res.coords, res.other_basis = out["two"], coords, v.cpu().double().numpy()
    res.overlaps = Overlaps(
        own=angles.overlap_matrix(own),
        vs_universal=angles.overlap_matrix(own, [ub])[:, 0],
        cosines=np.stack([np.pad(angles.principal_cosines(b, ub), (0, ka - min(b.shape[1], ka))) for b in own]),
    )
    if folds is not None:
        res.heldout = HeldOut(folds=folds, kfold=out["kfold"], mean_kfold_captured=mean["kc"],
                              mean_kfold_error=mean["ke"])
    if do_loo:
        res.heldout = res.heldout or HeldOut()
        res.heldout.loo, res.heldout.mean_loo_captured, res.heldout.mean_loo_error = out["loo"], mean["lc"], mean["le"]
    if gparts is not None:
        gb = []
        for c in range(len(group_names)):
            gg, sg, ng = gparts.cell(c)
            gb.append(eigh_top(centered_gram(gg, sg, ng, center), ka)[1].cpu().double().numpy())
        res.groups = Groups(by=group_by, names=group_names, bases=np.stack(gb), overlap=angles.overlap_matrix(gb),
                            vs_universal=angles.overlap_matrix(gb, [ub])[:, 0])
    if keep_stack:
        xs = torch.stack(stack)
        if z is not None:
            xs = xs - z.reshape(-1).cpu().double()
        res.kernel = (xs @ xs.T).numpy()
        res.scores = kernel_scores(res.kernel, mopts.k_coord)[0]
    if mopts.null_draws:
        if null_ranks is not None:
            ranks = np.asarray(null_ranks, dtype=np.int64)
            removed = {"none": 0, "model": int(ranks.max()), "vector": 1}[center]
            spec = baselines.factored_null_spec(norms2, d, ranks, removed)
        else:
            spec = baselines.dense_null_spec(norms2, d, e, {"none": 0, "model": e, "vector": 1}[center])
        if baselines.null_affordable(spec):
            _set_null(res, baselines.null_band(spec, mopts.null_draws, mopts.seed))
        else:
            res.mp_edge_evr = baselines.mp_edge_evr(spec)
            notes.append(f"Gaussian null band skipped: {mopts.null_draws} eigendecompositions of {d}x{d} "
                         "are too costly here; the Marchenko-Pastur edge is still shown")
    return res


def _set_null(res: Metrics, band: NullBand) -> None:
    res.null, res.mp_edge_evr = band, band.mp_edge_evr


def _model_mode(open_stream, n, shape, basis, so, mopts, progress, device, dtype, kernel=None) -> Metrics:
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
    do_loo = n >= 3 and (mopts.loo == "on" or (mopts.loo == "auto" and n**4 <= _LOO_FLOPS))
    if do_loo:
        ho = res.heldout = res.heldout or HeldOut()
        ho.loo, ho.mean_loo_captured, ho.mean_loo_error = np.zeros((n, kk)), np.zeros(n), np.zeros(n)
        for i in range(n):
            train, test = idx[idx != i], np.array([i])
            ho.loo[i] = heldout.kernel_heldout(raw, train, test, kk, so.center)[0]
            ho.mean_loo_captured[test], ho.mean_loo_error[test] = _kernel_mean_only(raw, train, test)
    if mopts.null_draws:
        band = baselines.model_null_band(res.norms2, m * ncol, so.center != "none", mopts.null_draws, mopts.seed)
        _set_null(res, band)
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
