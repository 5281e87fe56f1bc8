"""Top-k eigenpairs of a symmetric PSD operator by randomized subspace iteration (written once).

Two callers: the randomized decomposition path (:mod:`explorer.engine.randomized`, a Gram
too large to form, applied model by model) and the metrics' refitted held-out fold bases
(:mod:`explorer.metrics.passes`; also leave-one-out where it runs), whose d x d Grams are formed
but need only their top k vectors.  Metadata-group bases (k = 8) stay exact: so few vectors in a
flat spectrum are not determined well enough by a few iterations.  With l = k + oversample columns and q = iters::

    Q = qr(Omega)                   Omega: d x l Gaussian from ``seed`` (a CPU generator)
    repeat q + 1 times: Y = A Q; Q = qr(Y)
    T = Q^T A Q = V diag(theta) V^T  ->  eigenvalues ~ theta[:k], vectors ~ Q V[:, :k]

(q + 2 applications of A.)  Accuracy of the *vectors*: the angle of the j-th decays like
(lambda_{l+1} / lambda_j)^(q+1) (:mod:`explorer.engine.randomized` states it for its defaults).
In a flat spectrum (the noise bulk of real LoRA families) the individual vectors converge
slowly, but what the metrics use — the energy a held-out model keeps in the top-k subspace —
does not depend on the choice of vectors inside a near-degenerate cluster and converges fast:
on 500 rank-16 adapters (d = 4096, bulk spectrum) the held-out captured-energy curves of
:data:`FOLD_ITERS` = 2 iterations lie within 5e-3 (largest, over models and k <= 256) and 1e-4
(mean over models) of the exact ones, and tests/test_topk.py checks 2e-2 / 2e-3 on a small
bulk-dominated family (60 models, d = 256, k = 48) and 1e-8 on planted eigenvalues.  The start is random, not the basis fitted on
all models: a start that already saw the held-out models would bias their held-out energy up.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from explorer.core.linalg import eigh_top, sign_fix, symmetrize

#: Refitted bases (folds, leave-one-out) come from :func:`subspace_top_eigh` at and above this side;
#: below it the exact partial eigh is as fast.
FAST_SIDE = 2048
#: Power iterations and oversampling of the refitted bases (accuracy: module docstring).
FOLD_ITERS = 2
FOLD_OVERSAMPLE = 32

Apply = Callable[[torch.Tensor], torch.Tensor]


def subspace_top_eigh(
    apply: Apply,
    d: int,
    k: int,
    *,
    oversample: int = FOLD_OVERSAMPLE,
    iters: int = FOLD_ITERS,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, torch.Tensor]:
    """Top-``k`` Ritz pairs of the symmetric PSD operator ``apply`` (Y -> A Y) on R^d.

    Parameters
    ----------
    apply : callable(Tensor (d, l)) -> Tensor (d, l)
    d : int
        Side of A.
    k : int
        Pairs returned (at most d).
    oversample, iters : int
        Extra columns l - k and power iterations q (module docstring).
    seed : int
        Seed of the Gaussian start (drawn on the CPU, so every device sees the same start).
    dtype, device : of the iteration.

    Returns
    -------
    eigenvalues : ndarray, shape (k,)
        Descending Ritz values, float64, clipped at 0 (each at most the true eigenvalue).
    basis : Tensor, shape (d, k)
        Orthonormal, sign-fixed, in ``dtype`` on ``device``.
    """
    k = min(int(k), d)
    width = min(d, k + int(oversample))
    gen = torch.Generator().manual_seed(int(seed))
    q = torch.linalg.qr(torch.randn(d, width, generator=gen, dtype=torch.float64)
                        .to(device=device, dtype=dtype)).Q
    for _ in range(int(iters) + 1):
        q = torch.linalg.qr(apply(q)).Q
    t = symmetrize(q.T @ apply(q))
    theta, v = torch.linalg.eigh(t)
    theta, v = torch.flip(theta, dims=[0]), torch.flip(v, dims=[1])
    vals = theta[:k].clamp_min(0).cpu().double().numpy()
    return vals, sign_fix(q @ v[:, :k])


def refit_basis(gram: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Top-``k`` eigenvectors of a formed Gram refitted on part of the models (a fold, all but one).

    Exact (:func:`~explorer.core.linalg.eigh_top`) below :data:`FAST_SIDE` or when k is more
    than a quarter of the side; randomized (:func:`subspace_top_eigh`, accuracy in the module
    docstring) above, where an exact eigh of 4096^2 costs seconds per fold.

    Parameters
    ----------
    gram : Tensor, shape (d, d)
    k : int
    seed : int

    Returns
    -------
    Tensor, shape (d, min(k, d))
        Same dtype and device as ``gram``.
    """
    d = gram.shape[0]
    if d < FAST_SIDE or k > d // 4:
        vals, basis = eigh_top(gram, k)
    else:
        # float32 iterations: their round-off (~1e-6) is far below the method's own accuracy on the
        # captured-energy curves (module docstring), and the products run twice as fast.
        g32 = gram.to(torch.float32)
        vals, basis = subspace_top_eigh(lambda y: g32 @ y, d, k, seed=seed, dtype=torch.float32, device=gram.device)
        # Orthonormal to the Gram's own precision again (QR keeps the span of every leading block).
        basis = sign_fix(torch.linalg.qr(basis.to(gram.dtype)).Q)
    return _drop_floor(np.asarray(vals, dtype=np.float64), basis)


def _drop_floor(vals: np.ndarray, basis: torch.Tensor) -> torch.Tensor:
    """Zero the directions whose eigenvalue is at the Gram's numerical floor (d * eps * lambda_1).

    A Gram refitted on part of the models is often rank-deficient (48 training models of a
    128-wide centred layer); its eigenvectors beyond the rank are an arbitrary basis of the null
    space, which rounding in the last bit rotates, so a held-out model's energy "captured" by
    them would be noise.  Zero columns capture nothing: the held-out curve stays flat beyond the
    fit's rank, the same in every run (locally or summed on a cluster in another order).
    """
    if not len(vals) or vals[0] <= 0:
        return torch.zeros_like(basis)
    floor = vals[0] * basis.shape[0] * float(torch.finfo(basis.dtype).eps)
    dead = np.flatnonzero(vals[: basis.shape[1]] <= floor)
    if dead.size:
        basis = basis.clone()
        basis[:, torch.from_numpy(dead)] = 0
    return basis
