"""Compression: keep k shared directions of a layer group and store the basis plus each model's
coefficients (:class:`CompressedView`), beside the mean-only reconstruction.

Per (group, view) the stored form is U_k (d x k), the centre Z when the analysis centred
(d x e), and C_i = U_k^T (X_i - Z) (k x e_i) per model (:mod:`explorer.apply.basis`).  Bytes are
counted exactly: *before* is each model's tensor as stored (its numel times its dtype's size,
from the file headers), *after* is every number of the stored form times the size of the
bundle's dtype, which is what :mod:`explorer.apply.bundle` writes.  Each model's error is
||W_i - W^_i||_F / ||W_i||_F; the mean-only baseline replaces every model by the family's mean
matrix (||W_i - mean||_F / ||W_i||_F): a subspace that does no better than the mean compresses
nothing the mean would not.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from explorer.apply.basis import SharedBasis, analysed_family, model_matrices, shared_basis
from explorer.core.errors import OptionError
from explorer.core.progress import ProgressFn
from explorer.sources.family import Family
from explorer.sources.readers import ITEMSIZE

#: Dtypes a compressed form is stored in (the reconstructed PEFT adapters keep their own).
STORE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def store_dtype(name: str) -> torch.dtype:
    """The torch dtype of a store dtype name (``float32`` or ``float64``)."""
    if name not in STORE_DTYPES:
        raise OptionError(f"dtype {name!r} is not one of {', '.join(STORE_DTYPES)}")
    return STORE_DTYPES[name]


def _relative(num2: float, den2: float) -> float:
    """sqrt(num2 / den2), NaN for a zero denominator (a zero model has no relative error)."""
    return float(np.sqrt(max(num2, 0.0) / den2)) if den2 > 0 else float("nan")


@dataclass(eq=False)
class CompressedView:
    """One (group, view) kept as k shared directions plus coefficients.

    Attributes
    ----------
    basis : SharedBasis
        The fitted basis (all its columns; the first ``k`` are stored).
    k : int
    tau : float or None
        The threshold k came from, when it came from one.
    names : tuple of str
        Models, in the order of ``coefficients``.
    coefficients : list of Tensor, each shape (k, e_i), float64
    stored_bytes : ndarray of int, shape (N,)
        Each model's tensor as stored in its file.
    errors : ndarray, shape (N,)
        ||W_i - W^_i|| / ||W_i|| (NaN for a zero model).
    mean_errors : ndarray, shape (N,) or None
        ||W_i - mean|| / ||W_i||; None where the models' shapes differ (mixed LoRA ranks).
    norms2 : ndarray, shape (N,)
        ||W_i||^2.
    residual2 : ndarray, shape (N,)
        ||X_i - Z||^2: with the orthonormal U, ||W_i - W^_i(k)||^2 = ||X_i - Z||^2 - ||C_i[:k]||^2.
    notes : list of str
    """

    basis: SharedBasis
    k: int
    tau: float | None
    names: tuple[str, ...]
    coefficients: list[torch.Tensor]
    stored_bytes: np.ndarray
    errors: np.ndarray
    mean_errors: np.ndarray | None
    norms2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residual2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    notes: list[str] = field(default_factory=list)

    @property
    def layer(self) -> str:
        return self.basis.group.name

    @property
    def view(self) -> str:
        return self.basis.view

    def rebuild(self, i: int, k: int | None = None) -> torch.Tensor:
        """Model ``i`` rebuilt from its first ``k`` coefficients (default all): float64, view orientation."""
        k = self.k if k is None else k
        if not 0 <= k <= self.k:
            raise OptionError(f"k = {k} is outside 0..{self.k}, the directions {self.layer} view {self.view} keeps")
        return self.basis.rebuild(self.coefficients[i][:k])

    def error_curve(self) -> np.ndarray:
        """Each model's relative error at k = 1..self.k, shape (N, k), exactly (Pythagoras in the basis).

        NaN rows for zero models.
        """
        energy = np.stack([torch.cumsum((c * c).sum(dim=1), 0).numpy() for c in self.coefficients]) \
            if self.coefficients else np.zeros((0, self.k))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(np.clip(self.residual2[:, None] - energy, 0.0, None) / self.norms2[:, None])

    def truncated(self, k: int) -> CompressedView:
        """The same compression keeping only the first ``k`` directions (exact: the coefficients
        of fewer directions are the first rows of these, and the errors follow by Pythagoras)."""
        if not 1 <= k <= self.k:
            raise OptionError(f"k = {k} is outside 1..{self.k}, the directions {self.layer} view {self.view} keeps")
        errors = self.error_curve()[:, k - 1] if self.residual2.size else self.errors
        return replace(self, k=k, tau=None, coefficients=[c[:k] for c in self.coefficients], errors=errors,
                       notes=list(self.notes))

    def numbers_after(self) -> int:
        """Numbers the stored form holds: U_k, Z (when centred) and every C_i."""
        centre = 0 if self.basis.centre is None else int(self.basis.centre.size)
        return self.basis.side * self.k + centre + sum(int(c.numel()) for c in self.coefficients)

    def bytes_after(self, dtype: str) -> int:
        return self.numbers_after() * torch.tensor([], dtype=store_dtype(dtype)).element_size()

    def to_json(self, dtype: str) -> dict[str, Any]:
        before, after = int(self.stored_bytes.sum()), self.bytes_after(dtype)
        b = self.basis
        return {
            "layer": self.layer, "view": self.view, "mode": b.mode, "center": b.center, "k": self.k, "tau": self.tau,
            "side": b.side, "shape": list(b.group.shape), "n_models": len(self.names),
            "bytes_before": before, "bytes_after": after, "ratio": before / after if after else None,
            "error_mean": _nan_stat(np.nanmean, self.errors), "error_max": _nan_stat(np.nanmax, self.errors),
            "mean_only_error_mean": None if self.mean_errors is None else _nan_stat(np.nanmean, self.mean_errors),
            "errors": {n: _finite(e) for n, e in zip(self.names, self.errors)},
            "mean_only_errors": None if self.mean_errors is None else
            {n: _finite(e) for n, e in zip(self.names, self.mean_errors)},
            "notes": list(self.notes),
        }


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _nan_stat(fn, a: np.ndarray) -> float | None:
    return _finite(float(fn(a))) if np.isfinite(a).any() else None


def _stored_bytes(family: Family, group, view: str) -> np.ndarray:
    """Each model's tensor of ``view`` as stored: numel x dtype size, from the headers alone."""
    name = group.b_tensor if view == "B" else group.tensor
    out = []
    for m in family.models:
        info = family.headers[m.name][name]
        out.append(int(np.prod(info.shape)) * ITEMSIZE.get(info.dtype, 4))
    return np.array(out, dtype=np.int64)


def compress_view(family: Family, analysis, k: int | None = None, tau: float | None = None,
                  progress: ProgressFn | None = None) -> CompressedView:
    """Keep ``k`` (or k(tau)) directions of one analysed (group, view) and each model's coefficients.

    Two passes over the models: their sum (the mean-only baseline and the centre), then the
    coefficients and both errors.

    Parameters
    ----------
    family : Family
        The family the analysis was run on (members it left out are left out here, and stay named).
    analysis : explorer.pipeline.result.Analysis
        Out- or in-mode, any view of :data:`explorer.apply.basis.APPLY_VIEWS`.
    k, tau
        Exactly one: the directions to keep, or the cumulative EVR to reach.

    Raises
    ------
    OptionError
        Model mode, a k above the basis, neither or both of k and tau.
    """
    fam = analysed_family(family, analysis)
    group, view, n = analysis.group, analysis.view, len(analysis.models)
    total, same_shape, shape0 = None, True, None
    for _, w in model_matrices(fam, group, view):
        shape0 = shape0 or tuple(w.shape)
        if tuple(w.shape) != shape0:
            same_shape = False
        elif same_shape:
            total = w.clone() if total is None else total + w
    sb = shared_basis(fam, analysis, total if same_shape else None)
    kk = sb.k_for(k, tau)
    mean = total / n if same_shape and total is not None else None
    mm = float((mean * mean).sum()) if mean is not None else 0.0
    coefs, errors, mean_errors = [], np.zeros(n), np.full(n, np.nan)
    norms2, residual2 = np.zeros(n), np.zeros(n)
    for i, w in model_matrices(fam, group, view):
        if progress is not None:
            progress(i, n, f"compress {group.name} {view}")
        c = sb.coefficients(w, kk)
        r = sb.rebuild(c) - w
        ww = float((w * w).sum())
        errors[i] = _relative(float((r * r).sum()), ww)
        x = sb.to_side(w)
        zc = sb.centre_for(x.shape[1])
        d = x - zc if zc is not None else x
        norms2[i], residual2[i] = ww, float((d * d).sum())
        if mean is not None:
            mean_errors[i] = _relative(ww - 2 * float((w * mean).sum()) + mm, ww)
        coefs.append(c.contiguous())
    notes = []
    if not same_shape:
        notes.append("mean-only reconstruction undefined: the LoRA ranks differ across adapters")
    if (zero := np.flatnonzero(~np.isfinite(errors))).size:
        notes.append(f"{zero.size} model(s) are zero (e.g. {analysis.models[int(zero[0])]!r}): no relative error")
    return CompressedView(sb, kk, None if k is not None else float(tau), tuple(analysis.models), coefs,
                          _stored_bytes(fam, group, view), errors, mean_errors if same_shape else None,
                          norms2, residual2, notes)
