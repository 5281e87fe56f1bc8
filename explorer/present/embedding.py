"""Place each model as a point: PCA (default), UMAP or t-SNE of its coordinates in the shared basis.

UMAP costs ~15 s of numba compilation in every new process, so it is imported only when asked
for; callers cache its result.
"""
from __future__ import annotations

import numpy as np

from explorer.core.errors import OptionError
from explorer.core.linalg import sign_fix

METHODS: tuple[str, ...] = ("pca", "umap", "tsne")


def embed(x: np.ndarray, method: str = "pca", dims: int = 2, seed: int = 0) -> np.ndarray:
    """Embed N feature vectors in 2-D or 3-D.

    Parameters
    ----------
    x : ndarray, shape (N, p)
        One row per model (e.g. flattened core C_i = U_k^T W_i V_k, or model-mode scores).
    method : {"pca", "umap", "tsne"}
    dims : {2, 3}
    seed : int
        Seeds UMAP and t-SNE, so a figure is reproducible.

    Returns
    -------
    ndarray, shape (N, dims)
        PCA: scores on the top principal axes (sign-fixed), zero-padded if rank < dims.
    """
    if method not in METHODS:
        raise OptionError(f"embedding method {method!r} is not one of {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise OptionError(f"embedding dims must be 2 or 3, got {dims!r}")
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 3:
        raise OptionError(f"an embedding needs at least 3 models, the family has {n}")
    if method == "pca":
        return _pca(x, dims)
    if method == "umap":
        import umap  # heavy: numba compiles on first use

        reducer = umap.UMAP(n_components=dims, n_neighbors=max(2, min(15, n - 1)), random_state=seed,
                            init="spectral" if n > dims + 1 else "random")
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)
    from sklearn.manifold import TSNE

    perplexity = float(max(2.0, min(30.0, (n - 1) / 3)))
    return TSNE(n_components=dims, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    xc = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    k = min(dims, len(s))
    scores = u[:, :k] * s[:k]
    scores = sign_fix(scores)  # so the picture does not flip between runs
    if k < dims:
        scores = np.hstack([scores, np.zeros((x.shape[0], dims - k))])
    return scores


def explained_ratio(x: np.ndarray, dims: int) -> np.ndarray:
    """Share of the coordinates' variance on each of the top ``dims`` PCA axes, shape (dims,)."""
    xc = np.asarray(x, dtype=np.float64) - np.asarray(x).mean(axis=0, keepdims=True)
    s = np.linalg.svd(xc, compute_uv=False) ** 2
    out = np.zeros(dims)
    k = min(dims, len(s))
    out[:k] = s[:k] / s.sum() if s.sum() > 0 else 0
    return out
