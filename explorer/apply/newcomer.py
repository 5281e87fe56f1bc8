"""Project a newcomer: place a model that is not in the family onto the family's cached basis.

Nothing is refitted.  For a newcomer's matrix X (side orientation, centred like the family with
the family's own centre Z):

* ``captured_energy`` = ||U_k^T (X - Z)||^2 / ||X - Z||^2 at k (default k(0.9) of the family);
* ``heldout_percentile``: where that falls among the family's *held-out* captured energies at
  the same k (leave-one-out where computed, else k-fold): each member measured on a basis fitted
  without it, the like-for-like reference for a model the basis never saw (in-sample energies
  would make every newcomer look poor);
* ``coordinates`` C = U_kc^T (X - Z) V_kc, exactly the family's coordinates (the Embedding
  page's features), and ``nearest``: the family members closest in that space (Euclidean);
* ``outlier``: the robust z-score of the newcomer's held-out residual 1 - captured against the
  family's, (r - median) / (1.4826 MAD); ``is_outlier`` when above 3.5 (Iglewicz and Hoaglin's
  cut-off).  A family member projected this way gets its in-family coordinates back.

JSON (``project --json``): schema ``subspace-explorer/project/1`` with one entry per projected
model: name, captured_energy, heldout_percentile, nearest [{name, distance}], outlier,
is_outlier.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explorer.apply.basis import SharedBasis, model_matrices, shared_basis
from explorer.catalog.groups import build_catalog
from explorer.catalog.views import views_for
from explorer.core.errors import InputError, OptionError
from explorer.metrics.heldout import captured_curve
from explorer.sources.family import Family, Skipped

PROJECT_SCHEMA = "subspace-explorer/project/1"
OUTLIER_Z = 3.5


@dataclass
class Projected:
    """One newcomer placed in the family's basis."""

    name: str
    captured_energy: float
    heldout_percentile: float
    coordinates: np.ndarray
    nearest: list[tuple[str, float]]
    outlier: float
    is_outlier: bool

    def to_json(self) -> dict[str, Any]:
        fin = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731
        return {"name": self.name, "captured_energy": fin(self.captured_energy),
                "heldout_percentile": fin(self.heldout_percentile),
                "nearest": [{"name": n, "distance": float(d)} for n, d in self.nearest],
                "outlier": fin(self.outlier), "is_outlier": bool(self.is_outlier)}


@dataclass
class Projection:
    """Newcomers of one (group, view) projected onto one family's basis."""

    onto: str
    layer: str
    view: str
    mode: str
    center: str
    k: int
    reference: str
    entries: list[Projected]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": PROJECT_SCHEMA, "onto": self.onto, "layer": self.layer, "view": self.view,
                "mode": self.mode, "center": self.center, "k": self.k, "reference": self.reference,
                "entries": [e.to_json() for e in self.entries], "skipped": [s.to_json() for s in self.skipped],
                "notes": list(self.notes)}


def _reference(metrics, k: int) -> tuple[np.ndarray, str]:
    """The family's held-out captured energies at k (leave-one-out, else k-fold)."""
    ho = metrics.heldout if metrics is not None else None
    for kind, name in (("loo", "leave-one-out"), ("kfold", "k-fold")):
        a = getattr(ho, kind, None) if ho is not None else None
        if a is not None and a.shape[1] >= k:
            return a[:, k - 1], name
    raise OptionError("the family's analysis has no held-out coverage (it needs at least 2 models): a "
                      "newcomer has nothing like-for-like to be compared with")


def robust_z(r: float, ref: np.ndarray) -> float:
    """(r - median) / (1.4826 MAD) of ``ref`` (NaN rows ignored); inf/0 conventions for MAD = 0."""
    ref = ref[np.isfinite(ref)]
    if ref.size == 0 or not np.isfinite(r):
        return float("nan")
    med = float(np.median(ref))
    mad = 1.4826 * float(np.median(np.abs(ref - med)))
    if mad <= 0:
        return 0.0 if abs(r - med) <= 1e-12 else float(np.sign(r - med) * np.inf)
    return (r - med) / mad


def newcomer_matrices(new: Family, sb: SharedBasis) -> list[tuple[str, torch.Tensor]]:
    """Each newcomer's matrix in the basis' view, checked against the basis' group.

    Raises
    ------
    InputError
        A newcomer without the group, or holding it with another shape (naming both shapes).
    OptionError
        A view the newcomer's group does not have (e.g. LoRA factors of a dense model).
    """
    group = sb.group
    catalog = {g.name: g for g in build_catalog(new)}
    g = catalog.get(group.name)
    if g is None:
        raise InputError(f"{new.source}: holds no layer group {group.name!r}, which the basis of "
                         f"{sb.family} was fitted on")
    if g.kind != group.kind or tuple(g.shape) != tuple(group.shape):
        raise InputError(f"{new.source}: {group.name} is a {g.kind} group of shape {'x'.join(map(str, g.shape))}, "
                         f"the basis of {sb.family} was fitted on a {group.kind} group of shape "
                         f"{'x'.join(map(str, group.shape))}")
    if sb.view not in views_for(new, g):
        raise OptionError(f"{new.source}: view {sb.view!r} does not apply to its {group.name}; it has "
                          f"{', '.join(views_for(new, g))}")
    out = []
    for i, w in model_matrices(new, g, sb.view):
        sb.check_matrix(w, f"{new.models[i].name}: {group.name}")
        out.append((new.models[i].name, w))
    return out


def project_newcomers(new: Family, family: Family, analysis, k: int | None = None,
                      n_nearest: int = 5, view: str | None = None, mode: str | None = None) -> Projection:
    """Project every model of ``new`` onto the basis of ``analysis`` (fitted on ``family``).

    Parameters
    ----------
    new : Family
        The newcomers (one or more models holding the analysed group).
    family : Family
        The family the analysis was fitted on (for its centre, when centred).
    analysis : explorer.pipeline.result.Analysis
        Out- or in-mode, with metrics (held-out coverage and coordinates).
    k : int, optional
        Directions for the captured energy; default k(0.9) of the family.
    n_nearest : int
    view, mode : str, optional
        The view and mode the caller means to project in; given, they must be the basis' own.

    Raises
    ------
    OptionError
        Model mode, a k above the basis, an analysis without metrics, a basis of another view or
        mode than asked.
    """
    asked = {"view": view, "mode": mode}
    have = {"view": analysis.view, "mode": analysis.spectrum.mode}
    wrong = [f for f in asked if asked[f] is not None and asked[f] != have[f]]
    if wrong:
        raise OptionError(f"the basis of {analysis.group.name} was fitted in view {have['view']} (mode {have['mode']}); "
                          f"the newcomers were asked in " + ", ".join(f"{f} {asked[f]}" for f in wrong))
    m = analysis.metrics
    if m is None:
        raise OptionError("projecting a newcomer needs the family's analysis with its metrics")
    sb = shared_basis(family, analysis)
    kk = sb.k_for(k if k is not None else min(analysis.spectrum.k_at(0.9), sb.k_max))
    ref, ref_name = _reference(m, kk)
    u = torch.from_numpy(np.ascontiguousarray(sb.basis[:, :kk]))
    v = torch.from_numpy(np.ascontiguousarray(m.other_basis)) if m.other_basis is not None else None
    kc = int(round(np.sqrt(m.coords.shape[1]))) if m.coords is not None else 0
    uc = torch.from_numpy(np.ascontiguousarray(sb.basis[:, :kc]))
    entries, notes = [], []
    for name, w in newcomer_matrices(new, sb):
        x = sb.to_side(w)
        z = sb.centre_for(x.shape[1])
        cap = float(captured_curve(u, x, z)[-1])
        coords = np.zeros(0)
        nearest: list[tuple[str, float]] = []
        if v is not None and kc and v.shape[0] != x.shape[1]:
            # e.g. a LoRA factor of another rank in view A or B: its other side is its own r-space.
            notes.append(f"{name}: no coordinates or nearest neighbours: its other side has {x.shape[1]} "
                         f"dimensions, the family's coordinates were measured in {v.shape[0]}")
        elif v is not None and kc:
            p = uc.T @ (x - z if z is not None else x)
            core = (p @ v[:, :kc]).numpy()
            coords = (core if sb.mode == "out" else core.T).reshape(-1)
            dist = np.linalg.norm(m.coords - coords[None, :], axis=1)
            order = np.argsort(dist, kind="stable")[:n_nearest]
            nearest = [(analysis.models[int(j)], float(dist[j])) for j in order]
        finite = ref[np.isfinite(ref)]
        pct = 100.0 * float(np.mean(finite <= cap + 1e-12)) if finite.size else float("nan")
        z_out = robust_z(1.0 - cap, 1.0 - ref)
        entries.append(Projected(name, cap, pct, coords, nearest, z_out, bool(z_out > OUTLIER_Z)))
    notes.insert(0, f"captured energy at k = {kk} against the family's {ref_name} held-out captured energies "
                    f"({int(np.isfinite(ref).sum())} models)")
    return Projection(analysis.source, analysis.group.name, analysis.view, sb.mode, sb.center, kk, ref_name,
                      entries, list(new.skipped), notes)
