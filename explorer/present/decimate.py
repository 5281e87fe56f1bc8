"""Keep what is sent to the browser small: a 500-model family's charts must stay responsive."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def decimate_square(labels: Sequence[str], matrix: np.ndarray, max_rows: int) -> tuple[list[str], np.ndarray]:
    """Subsample a symmetric N x N matrix to at most ``max_rows`` evenly spaced rows and columns.

    Parameters
    ----------
    labels : sequence of str, length N
    matrix : ndarray, shape (N, N)
    max_rows : int

    Returns
    -------
    labels : list of str
    matrix : ndarray, shape (n, n), n = min(N, max_rows)
    """
    n = len(labels)
    if n <= max_rows:
        return list(labels), np.asarray(matrix)
    idx = np.unique(np.linspace(0, n - 1, max_rows).round().astype(int))
    return [labels[i] for i in idx], np.asarray(matrix)[np.ix_(idx, idx)]


def decimate_curve(x: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` points of a curve, keeping the first and last."""
    n = len(x)
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
