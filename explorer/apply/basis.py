"""The shared basis of one analysed (layer group, view), frozen for use.

Compression, projecting a newcomer and merging all work in the *side orientation* of the
analysis: X_i = W_i in out-mode (d = m rows) and X_i = W_i^T in in-mode (d = n rows), where
W_i is the model's matrix in the view (its weight, its delta, its LoRA factor A (r x n) or
B (m x r)).  With the basis U (d x k, orthonormal columns, the analysis' eigenvectors) and the
centre Z (d x e) the analysis subtracted (None for centring ``none``):

    coefficients   C_i = U_k^T (X_i - Z)        (k x e)
    rebuilt        X^_i = Z + U_k C_i

so at k = d (every direction) X^_i = X_i exactly, and in between X^_i is the orthogonal
projection of X_i onto the affine subspace Z + span(U_k) — the best rank-k reconstruction in
the shared directions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from explorer.catalog.groups import LayerGroup
from explorer.catalog.views import stream_for_view
from explorer.core.errors import OptionError
from explorer.core.linalg import center_matrix
from explorer.sources.family import Family

#: The views a shared basis is used in: dense weights and deltas, and each LoRA factor on its own
#: (SHARE's way: A in its input space, B in its output space).  ΔW = s B A has no factored
#: coefficients that store less than its factors, so it is compressed through A and B.
APPLY_VIEWS: tuple[str, ...] = ("full", "delta", "A", "B")


def model_matrices(family: Family, group: LayerGroup, view: str) -> Iterator[tuple[int, torch.Tensor]]:
    """``(index, W_i)`` of every model in ``view``, float64, each LoRA factor at its own rank.

    The engine's A/B streams zero-pad mixed ranks to the largest; the padding carries nothing, so
    it is cut here (A keeps its first r_i rows, B its first r_i columns) and what is compressed,
    counted and written back is each adapter's own factor.

    Yields
    ------
    (int, Tensor)
        Shape (m, n) for full / delta, (r_i, n) for A, (m, r_i) for B.
    """
    stream = stream_for_view(family, group, view)
    if view == "dW":
        stream = stream.dense()
    widths = getattr(stream, "widths", None)
    for i, t in enumerate(stream.open()):
        t = t.to(torch.float64)
        if widths is not None:
            t = t[: widths[i]] if view == "A" else t[:, : widths[i]]
        yield i, t


@dataclass(eq=False)
class SharedBasis:
    """The fitted basis and centre of one (group, view, mode, centring) of a family.

    Attributes
    ----------
    source, family : str
        The family it was fitted on.
    group : LayerGroup
    view : {"full", "delta", "A", "B", "dW"}
    mode : {"out", "in"}
    center : {"none", "model", "vector"}
    basis : ndarray, shape (d, k_max)
        The analysis' leading eigenvectors (orthonormal columns, descending eigenvalues).
    centre : ndarray, shape (d, e) or None
        Z, in side orientation; None without centring.
    cumulative : ndarray, shape (d,)
        The analysis' cumulative EVR (for k(tau)).
    models : tuple of str
        The models it was fitted on, in order.
    """

    source: str
    family: str
    group: LayerGroup
    view: str
    mode: str
    center: str
    basis: np.ndarray
    centre: np.ndarray | None
    cumulative: np.ndarray
    models: tuple[str, ...]

    @property
    def side(self) -> int:
        """d: the side of the space the basis spans."""
        return int(self.basis.shape[0])

    @property
    def k_max(self) -> int:
        """Basis columns available."""
        return int(self.basis.shape[1])

    def describe(self) -> str:
        """``layers.0 view A (mode in, centring none)``: for messages."""
        return f"{self.group.name} view {self.view} (mode {self.mode}, centring {self.center!r})"

    def k_for(self, k: int | None = None, tau: float | None = None) -> int:
        """The number of directions to keep: ``k`` itself, or k(tau) of the family's spectrum.

        Raises
        ------
        OptionError
            Unless exactly one of k, tau is given, k lies in 1..k_max and tau in (0, 1].
        """
        if (k is None) == (tau is None):
            raise OptionError("give the number of directions k or a threshold tau (one of them)")
        if tau is not None:
            if not 0.0 < float(tau) <= 1.0:
                raise OptionError(f"tau must lie in (0, 1], got {tau!r}")
            hit = np.flatnonzero(self.cumulative >= float(tau) - 1e-12)
            k = int(hit[0]) + 1 if hit.size else len(self.cumulative)
            return max(1, min(k, self.k_max))
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise OptionError(f"k must be an integer >= 1, got {k!r}")
        if k > self.k_max:
            raise OptionError(f"k = {k} is above the rank of the shared basis of {self.describe()}: "
                              f"it holds {self.k_max} directions (side {self.side})")
        return int(k)

    def to_side(self, w: torch.Tensor) -> torch.Tensor:
        """X = W (out-mode) or W^T (in-mode), float64."""
        w = w.to(torch.float64)
        return w if self.mode == "out" else w.T

    def from_side(self, x: torch.Tensor) -> torch.Tensor:
        """W back from X (the inverse of :meth:`to_side`)."""
        return x if self.mode == "out" else x.T

    def centre_for(self, e: int) -> torch.Tensor | None:
        """Z as a (d, e) tensor (None without centring)."""
        if self.centre is None:
            return None
        if self.centre.shape[1] != e:
            raise OptionError(f"a matrix with {e} columns on the {self.mode}-mode side cannot be centred like "
                              f"{self.describe()}, whose centre has {self.centre.shape[1]}")
        return torch.from_numpy(self.centre)

    def check_matrix(self, w: torch.Tensor, what: str) -> None:
        """Refuse a matrix whose basis side differs from this basis' (one line naming both)."""
        d = w.shape[0] if self.mode == "out" else w.shape[1]
        if w.dim() != 2 or d != self.side:
            raise OptionError(f"{what}: shape {tuple(w.shape)} has {d if w.dim() == 2 else '?'} on the "
                              f"{self.mode}-mode side, the basis of {self.describe()} has {self.side}")

    def coefficients(self, w: torch.Tensor, k: int) -> torch.Tensor:
        """C = U_k^T (X - Z), shape (k, e), for one model's matrix W in the view."""
        x = self.to_side(w)
        z = self.centre_for(x.shape[1])
        u = torch.from_numpy(np.ascontiguousarray(self.basis[:, :k]))
        return u.T @ (x - z if z is not None else x)

    def rebuild(self, c: torch.Tensor) -> torch.Tensor:
        """W^ from its coefficients C (k x e): Z + U_k C, in the view's orientation."""
        k = c.shape[0]
        u = torch.from_numpy(np.ascontiguousarray(self.basis[:, :k]))
        x = u @ c.to(torch.float64)
        z = self.centre_for(x.shape[1])
        return self.from_side(x + z if z is not None else x)


def analysed_family(family: Family, analysis) -> Family:
    """``family`` without the members ``analysis`` left out (NaN/Inf data), each still named in
    ``skipped`` with the analysis' reason: what is fitted is what is used."""
    keep = set(analysis.models)
    why = {s.name: s.reason for s in analysis.skipped}
    gone = {m.name: why.get(m.name, "left out of the analysis") for m in family.models if m.name not in keep}
    return family.without(gone) if gone else family


def shared_basis(family: Family, analysis, total: torch.Tensor | None = None) -> SharedBasis:
    """The basis of an out- or in-mode analysis, with its centre recomputed from ``family``.

    The centre is not stored with an analysis (it is a d x e matrix); it is recomputed here from
    the same models in one pass, exactly as the engine formed it (:func:`center_matrix`).

    Parameters
    ----------
    family : Family
        The family the analysis was run on; its members that the analysis left out (NaN/Inf
        data) are left out here too.
    analysis : explorer.pipeline.result.Analysis
    total : Tensor, optional
        sum_i W_i over the analysed models in the view's orientation, when the caller already
        has it (saves the pass).

    Raises
    ------
    OptionError
        For a model-mode analysis (its basis spans the models, not the weights).
    """
    sp = analysis.spectrum
    if sp.mode not in ("out", "in"):
        raise OptionError(f"{analysis.group.name} view {analysis.view}: a {sp.mode}-mode analysis has no shared basis "
                          "of the weight space; use mode out or in")
    centre = None
    if sp.center != "none":
        if total is None:
            for _, w in model_matrices(analysed_family(family, analysis), analysis.group, analysis.view):
                total = w.clone() if total is None else total + w
        x = total if sp.mode == "out" else total.T
        z = center_matrix(x, len(analysis.models), sp.center)
        centre = z.contiguous().numpy() if z is not None else None
    return SharedBasis(analysis.source, analysis.family, analysis.group, analysis.view, sp.mode, sp.center,
                       np.asarray(sp.basis, dtype=np.float64), centre, np.asarray(sp.cumulative),
                       tuple(analysis.models))
