"""Accuracy against k: put each model's layer, projected onto the top-k shared directions, back.

This is the paper's central experiment.  For a layer group and a view, each model's matrix W_i
is replaced by its projection ``mu + U_k U_kᵀ (W_i - mu) V_k V_kᵀ`` (one side dropped when only
one basis is given; ``mu`` the centring the basis was fitted with) and the family's
:class:`~explorer.zoo.evaluate.Evaluator` measures test accuracy.  For the ``delta`` and ``dW``
views the projected update is added to the base weight.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from explorer.core.errors import OptionError
from explorer.core.linalg import centered_gram, check_center, eigh_top
from explorer.zoo.evaluate import Evaluator
from explorer.zoo.evaluators import evaluator_for


def project(w: torch.Tensor, u: torch.Tensor | None, v: torch.Tensor | None, mean: torch.Tensor | None = None) -> torch.Tensor:
    """``mean + U Uᵀ (W - mean) V Vᵀ``, dropping the side whose basis is ``None``.

    Parameters
    ----------
    w : Tensor (m, n)
    u : Tensor (m, k) with orthonormal columns, or None
    v : Tensor (n, k) with orthonormal columns, or None
    mean : Tensor broadcastable to (m, n), optional
        The centring the basis was fitted around: (m, n) for ``model``, (m, 1) or (1, n) for ``vector``.
    """
    x = w if mean is None else w - mean
    if u is not None:
        x = u @ (u.T @ x)
    if v is not None:
        x = (x @ v) @ v.T
    return x if mean is None else x + mean


def view_matrices(evaluator: Evaluator, group: str, view: str, names: Sequence[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """The replacement key of ``view`` of ``group`` and each model's matrix in that view.

    Returns
    -------
    key : str
        ``<group>.weight`` (full, delta, dW: the effective weight) or ``<group>.lora_A.weight`` /
        ``<group>.lora_B.weight``.
    matrices : dict model name -> Tensor (m, n), or (r, n) for A, (m, r) for B
    """
    if view not in evaluator.views:
        raise OptionError(f"view {view!r} does not apply to zoo:{evaluator.family}; use {' or '.join(evaluator.views)}")
    if group not in evaluator.layers:
        shown = ", ".join(evaluator.layers[:6]) + (" ..." if len(evaluator.layers) > 6 else "")
        raise OptionError(f"layer {group!r} of zoo:{evaluator.family} cannot be projected; use one of {shown}")
    out = {}
    for n in names:
        w = evaluator.weights(n)
        if view == "full":
            out[n] = w[f"{group}.weight"].float()
        elif view == "delta":
            out[n] = w[f"{group}.weight"].float() - evaluator.base[f"{group}.weight"].float()
        elif view == "dW":
            out[n] = w[f"{group}.delta"]
        else:
            out[n] = w[f"{group}.lora_{view}.weight"]
    key = f"{group}.lora_{view}.weight" if view in ("A", "B") else f"{group}.weight"
    return key, out


def _center_mean(mats: list[torch.Tensor], center: str, two_sided: bool, out_mode: bool) -> torch.Tensor | None:
    if center == "none":
        return None
    if center == "model":
        return torch.stack(mats).mean(0)
    if two_sided:
        raise OptionError("center 'vector' is defined for one mode at a time; give u or v, not both")
    # The mean column of the out-mode unfolding [W_1 ... W_N], or the mean row of the in-mode one.
    if out_mode:
        return torch.cat(mats, dim=1).mean(1, keepdim=True)
    return torch.cat(mats, dim=0).mean(0, keepdim=True)


def projected_accuracy(
    evaluator: Evaluator,
    group: str,
    view: str,
    ks: Sequence[int],
    u: np.ndarray | None = None,
    v: np.ndarray | None = None,
    center: str = "none",
    models: Sequence[str] | None = None,
    fit_models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Accuracy of every model with layer ``group`` projected onto the top-k shared directions.

    Parameters
    ----------
    evaluator : Evaluator
    group : str
        Module path, e.g. ``layers.1``.
    view : {"full", "delta", "A", "B", "dW"}
        What the basis was fitted on: the weight, the weight minus the base, the LoRA factor A
        (in-mode only), the LoRA factor B (out-mode only), or the update ΔW = s B A.
    ks : list of int
        Ranks to try, each in 0..(number of basis columns).
    u : ndarray (m, k_max), optional
        Shared output basis (out-mode eigenvectors, descending).
    v : ndarray (n, k_max), optional
        Shared input basis (in-mode eigenvectors, descending).  Give u, v or both (two-sided).
    center : {"none", "model", "vector"}
        The centring the basis was fitted with.
    models : list of str, optional
        The models evaluated (default: every model).
    fit_models : list of str, optional
        The models the basis was fitted on, whose mean it was centred around (default: every
        model): evaluating a subset keeps the fitted mean, it does not re-centre on the subset.

    Returns
    -------
    DataFrame with columns ``model``, ``k``, ``accuracy``, ``stored_accuracy``.
    """
    if u is None and v is None:
        raise OptionError("projected_accuracy needs an output basis u, an input basis v, or both")
    if (view == "A" and u is not None) or (view == "B" and v is not None):
        raise OptionError(f"view {view!r}: LoRA factor {view} can only be projected on its "
                          f"{'input (v)' if view == 'A' else 'output (u)'} side")
    check_center(center)
    names = list(models) if models is not None else evaluator.models
    ut = None if u is None else torch.as_tensor(np.ascontiguousarray(u), dtype=torch.float32)
    vt = None if v is None else torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32)
    k_max = min(t.shape[1] for t in (ut, vt) if t is not None)
    if any(k < 0 or k > k_max for k in ks):
        raise OptionError(f"ks must lie in 0..{k_max} (the number of basis columns given)")
    key, original = view_matrices(evaluator, group, view, names)
    fitted = list(fit_models) if fit_models is not None else evaluator.models
    fit_mats = [original[n] for n in fitted] if set(fitted) <= set(original) else \
        list(view_matrices(evaluator, group, view, fitted)[1].values())
    mean = _center_mean(fit_mats, center, ut is not None and vt is not None, ut is not None)
    return _evaluate(evaluator, group, view, key, original, names, ks, ut, vt, mean)


def _evaluate(evaluator: Evaluator, group: str, view: str, key: str, original: dict[str, torch.Tensor],
              names: Sequence[str], ks: Sequence[int], ut: torch.Tensor | None, vt: torch.Tensor | None,
              mean: torch.Tensor | None) -> pd.DataFrame:
    """Accuracy of ``names`` with their layer replaced by its projection, for each k."""
    rows = []
    for k in ks:
        uk = None if ut is None else ut[:, :k]
        vk = None if vt is None else vt[:, :k]
        rep = {}
        for n in names:
            p = project(original[n], uk, vk, mean)
            if view in ("delta", "dW"):
                p = evaluator.base[f"{group}.weight"].float() + p
            rep[n] = {key: p}
        accs = evaluator.accuracies(rep, names)
        rows += [{"model": n, "k": int(k), "accuracy": accs[n], "stored_accuracy": evaluator.stored_accuracy(n)}
                 for n in names]
    return pd.DataFrame(rows)


def accuracy_vs_k(analysis, ks: Sequence[int] | None = None, models: Sequence[str] | None = None) -> pd.DataFrame | None:
    """:func:`projected_accuracy` for an :class:`explorer.pipeline.analyze.Analysis` of a zoo family.

    Uses the analysis' basis (``spectrum.basis``, out- or in-mode), view, group and centring.

    Parameters
    ----------
    analysis : explorer.pipeline.analyze.Analysis
    ks : list of int, optional
        Default: 0, 1, 2, 4, 8, ... up to the basis size, and the basis size itself.
    models : list of str, optional

    Returns
    -------
    DataFrame (see :func:`projected_accuracy`), or ``None`` when the family has no evaluator.

    Raises
    ------
    OptionError
        For a model-mode analysis (it has no basis in weight space).
    """
    ev = evaluator_for(analysis.source)
    if ev is None:
        return None
    spec = analysis.spectrum
    if spec.mode not in ("out", "in"):
        raise OptionError(f"accuracy against k needs an out- or in-mode basis; this analysis is {spec.mode}-mode")
    basis = np.asarray(spec.basis)
    k_max = basis.shape[1]
    if ks is None:
        ks = sorted({0, k_max, *(2**j for j in range(int(np.log2(max(k_max, 1))) + 1) if 2**j <= k_max)})
    u, v = (basis, None) if spec.mode == "out" else (None, basis)
    return projected_accuracy(ev, analysis.group.name, analysis.view, ks, u=u, v=v, center=spec.center, models=models,
                              fit_models=analysis.models)


def heldout_accuracy_vs_k(analysis, ks: Sequence[int], folds: np.ndarray) -> pd.DataFrame | None:
    """Accuracy of each model projected onto a basis fitted *without its fold* (out or in mode).

    The in-sample curve (:func:`accuracy_vs_k`) projects every model onto a basis it helped fit;
    here fold f's models are projected onto the top-k eigenvectors of the Gram of the other
    folds, centred around the other folds' mean, so the curve says whether the subspace carries
    the function of models it never saw.

    Parameters
    ----------
    analysis : explorer.pipeline.analyze.Analysis
    ks : list of int
        Each in 0..min(d, rank of a fold's Gram).
    folds : ndarray of int, shape (N,)
        Fold of each model of ``analysis.models`` (the k-fold coverage's own assignment).

    Returns
    -------
    DataFrame (columns as :func:`projected_accuracy`), or ``None`` without an evaluator.
    """
    ev = evaluator_for(analysis.source)
    if ev is None:
        return None
    mode, center = analysis.spectrum.mode, analysis.spectrum.center
    if mode not in ("out", "in"):
        raise OptionError(f"held-out accuracy needs an out- or in-mode basis; this analysis is {mode}-mode")
    names = list(analysis.models)
    key, original = view_matrices(ev, analysis.group.name, analysis.view, names)
    frames = []
    for f in sorted({int(x) for x in folds}):
        train = [n for n, g in zip(names, folds) if int(g) != f]
        test = [n for n, g in zip(names, folds) if int(g) == f]
        sides = [(original[n] if mode == "out" else original[n].T).double() for n in train]
        gram = sum(x @ x.T for x in sides)
        basis = eigh_top(centered_gram(gram, sum(sides), len(sides), center), max(ks))[1].float()
        mean = _center_mean([original[n] for n in train], center, False, mode == "out")
        u, v = (basis, None) if mode == "out" else (None, basis)
        frames.append(_evaluate(ev, analysis.group.name, analysis.view, key, original, test, ks, u, v, mean))
    return pd.concat(frames, ignore_index=True)
