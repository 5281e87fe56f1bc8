"""Place each model as a point: PCA (default), UMAP or t-SNE of its coordinates in the shared basis;
pick the label that best separates the points (the Embedding page's default colour).

UMAP costs ~15 s of numba compilation in every new process, so it is imported only when asked
for; callers cache its result.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from explorer.core.errors import OptionError
from explorer.core.linalg import sign_fix
from explorer.present.tables import MAX_CATEGORIES

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


def embed_with_newcomers(x: np.ndarray, x_new: np.ndarray, method: str = "pca", dims: int = 2,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Embed a family and place newcomers in the same picture.

    PCA is fitted on the family alone and the newcomers are placed on its axes (the family's points
    are exactly :func:`embed`'s); UMAP and t-SNE cannot place points on a fitted map without
    moving it, so the family and the newcomers are embedded together (said in the note).

    Parameters
    ----------
    x : ndarray, shape (N, p)
    x_new : ndarray, shape (M, p)

    Returns
    -------
    family_points : ndarray (N, dims)
    newcomer_points : ndarray (M, dims)
    note : str
    """
    x = np.asarray(x, dtype=np.float64)
    x_new = np.asarray(x_new, dtype=np.float64).reshape(-1, x.shape[1])
    if method != "pca":
        both = embed(np.vstack([x, x_new]), method, dims, seed)
        return both[: len(x)], both[len(x):], (f"{method.upper()} was run on the family and the newcomers together "
                                                "(it cannot place new points on a fitted map)")
    pts = _pca(x, dims)
    mu = x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    k = min(dims, len(s))
    raw = (x - mu) @ vt[:k].T
    # _pca's scores are u s (= raw) with sign_fix's flips: apply the same flips to the newcomers.
    flips = np.where(np.sum(raw * pts[:, :k], axis=0) < 0, -1.0, 1.0)
    new = ((x_new - mu) @ vt[:k].T) * flips
    if k < dims:
        new = np.hstack([new, np.zeros((new.shape[0], dims - k))])
    return pts, new, "newcomers placed on the family's PCA axes (not refitted)"


def explained_ratio(x: np.ndarray, dims: int) -> np.ndarray:
    """Share of the coordinates' variance on each of the top ``dims`` PCA axes, shape (dims,)."""
    xc = np.asarray(x, dtype=np.float64) - np.asarray(x).mean(axis=0, keepdims=True)
    s = np.linalg.svd(xc, compute_uv=False) ** 2
    out = np.zeros(dims)
    k = min(dims, len(s))
    out[:k] = s[:k] / s.sum() if s.sum() > 0 else 0
    return out


def separation(points: np.ndarray, labels: pd.Series) -> float:
    """How well one label column separates the points: the adjusted one-way ANOVA R².

    R² = SS_between / SS_total is the share of the points' total variance (summed over their
    axes) that the group means explain; with g groups among N points it is corrected for chance,
    ``1 - (1 - R²)(N - 1)/(N - g)``, so that a label with more groups (which explains more by
    chance alone, (g - 1)/(N - 1) in expectation) does not win for that reason.

    Parameters
    ----------
    points : ndarray, shape (N, d)
        The embedded models (d = 2 or 3).
    labels : Series, N values
        One label column; missing values form one group of their own.

    Returns
    -------
    float
        At most 1; about 0 for a label unrelated to the points; NaN when the points do not
        vary or there are not fewer groups than points (no within-group variance to compare).
    """
    x = np.asarray(points, dtype=np.float64)
    codes, uniques = pd.factorize(pd.Series(labels).reset_index(drop=True), use_na_sentinel=False)
    n, g = x.shape[0], len(uniques)
    centered = x - x.mean(axis=0, keepdims=True)
    total = float((centered**2).sum())
    if not total > 0 or g >= n:
        return float("nan")
    counts = np.bincount(codes, minlength=g).astype(np.float64)
    sums = np.zeros((g, x.shape[1]))
    np.add.at(sums, codes, centered)
    between = float(((sums**2).sum(axis=1) / counts).sum())  # Σ_groups n_j ‖mean_j - mean‖²
    r2 = min(between / total, 1.0)
    return 1.0 - (1.0 - r2) * (n - 1) / (n - g)


def best_separating_label(points: np.ndarray, table: pd.DataFrame) -> str | None:
    """The label column that best separates the embedded models, or None.

    Candidates are the columns of ``table`` other than ``name`` with 2 to
    :data:`explorer.present.tables.MAX_CATEGORIES` distinct values (categories: what a colour
    can show group by group) and fewer groups than models.  The winner has the highest
    :func:`separation` (adjusted between-group / total variance of the points); ties keep the
    column that comes first in ``table``.

    Parameters
    ----------
    points : ndarray, shape (N, d)
        The embedded models, one row per row of ``table``.
    table : DataFrame, N rows
        As :func:`explorer.present.tables.metadata_table` builds it.

    Returns
    -------
    str or None
        None when no candidate separates the points better than chance (every separation is
        at most 0, or NaN), e.g. for a family without labels.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != len(table):
        raise OptionError(f"points have shape {x.shape}, expected ({len(table)}, d): one row per model")
    best, best_score = None, 0.0
    for c in table.columns:
        if c == "name" or not 2 <= table[c].nunique() <= MAX_CATEGORIES:
            continue
        score = separation(x, table[c])
        if score > best_score + 1e-12:  # NaN never wins; a tie keeps the earlier column
            best, best_score = c, score
    return best
