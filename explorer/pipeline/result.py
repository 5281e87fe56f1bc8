"""The result of one analysis (:class:`Analysis`) and its JSON summary (``analyze --json``).

:data:`ENGINE_VERSION` is part of every cache key: bump it whenever a change to the engine or the
metrics changes any stored number, so old entries are simply not found again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from explorer.catalog.groups import LayerGroup
from explorer.core.errors import OptionError
from explorer.core.linalg import TAUS, k_table
from explorer.core.version import __version__ as _pkg_version
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.metrics.baselines import random_subspace_expectation
from explorer.metrics.results import ENERGY_KINDS, Metrics, MetricsOptions, energy_at
from explorer.metrics.verdict import Verdict, judge
from explorer.sources.family import Skipped

# 9: fold bases refitted by randomized subspace iteration above 2048 rows; a pooled null term
# drawn by the tridiagonal model; the Gram built once for the decomposition and the metrics.
# 10: the null strength-matched model by model at every size, centred as the data is, 100 draws
# with a band of stated coverage (metrics.null_spec).
# 11: group x group overlaps carry their permutation null (metrics.permutation); subsampling
# (metrics.subsample): k(tau) against N and the half-sampling band of the scree.
# 12: directions of a refitted fold / leave-one-out basis at the Gram's numerical floor are zero
# (core.topk.refit_basis): held-out curves are flat beyond the fit's rank, not rounding noise.
ENGINE_VERSION = "14"
__all__ = ["ENGINE_VERSION", "Analysis"]


@dataclass
class Analysis:
    """Everything a view needs about one (family, layer group, view, mode, options).

    Attributes
    ----------
    family : str
        Family display name.
    source : str
        SOURCE string it was loaded from.
    models : list of str
        Model names, in the order of the model axis.
    group : LayerGroup
    view : str
    options : SpectralOptions
    spectrum : Spectrum
    metrics : Metrics or None
        Per-model energies, coordinates, held-out coverage, angles, null band (None when
        ``analyze(..., metrics=None)``).
    metrics_options : MetricsOptions or None
    labels : list of dict
        Metadata labels of each model (same order as ``models``).
    engine_version : str
    cache_key : str or None
        Set by :func:`analyze_cached`.
    from_cache : bool
        True when :func:`analyze_cached` read it from the disk cache.
    skipped : list of Skipped
        Members of the family left out of this analysis, each with its path and reason: those
        that could not be loaded, and those whose data for this group holds NaN or Inf.
    """

    family: str
    source: str
    models: list[str]
    group: LayerGroup
    view: str
    options: SpectralOptions
    spectrum: Spectrum
    metrics: Metrics | None = None
    metrics_options: MetricsOptions | None = None
    labels: list[dict[str, str]] = field(default_factory=list)
    engine_version: str = ENGINE_VERSION
    cache_key: str | None = None
    from_cache: bool = False
    skipped: list[Skipped] = field(default_factory=list)

    def k_at(self) -> dict[str, int]:
        """k(tau) for the standard thresholds, keyed by ``"0.9"`` etc."""
        return k_table(self.spectrum.cumulative, TAUS)

    def energy_at(self, k: int, kind: str = "one") -> np.ndarray:
        """Per-model captured energy at rank ``k``, shape (N,).

        ``kind``: ``one`` / ``two`` (in-sample one- / two-sided), ``kfold`` / ``loo`` (held-out).
        """
        curves = self.metrics.curves(kind) if self.metrics is not None else None
        if curves is None:
            if kind not in ENERGY_KINDS:
                raise OptionError(f"energy kind {kind!r} is not one of {', '.join(ENERGY_KINDS)}")
            raise OptionError(f"energy {kind!r} was not computed for this analysis")
        return energy_at(curves, k)

    def _per_model(self) -> list[dict[str, Any]]:
        """Per model: name, labels, ||W_i||^2 and captured energy at k(0.9) (fitted and held-out)."""
        m = self.metrics
        k = min(self.spectrum.k_at(0.9), m.energy_one.shape[1])
        cols = {"energy_one_sided": m.curves("one"), "energy_two_sided": m.curves("two"),
                "heldout_kfold": m.curves("kfold"), "heldout_loo": m.curves("loo")}
        rows = []
        for i, name in enumerate(self.models):
            row: dict[str, Any] = {"name": name, "labels": self.labels[i] if i < len(self.labels) else {},
                                   "norm2": float(m.norms2[i]), "k": k}
            for key, a in cols.items():
                if a is not None:
                    val = float(a[i, min(k, a.shape[1]) - 1])
                    row[key] = val if np.isfinite(val) else None  # a zero model captures nothing defined
            if m.overlaps is not None:
                ov = float(m.overlaps.vs_universal[i])
                row["overlap_with_universal"] = ov if np.isfinite(ov) else None  # a zero model has none
            rows.append(row)
        return rows

    def verdict(self, k: int | None = None, p_adjusted: float | None = None) -> Verdict:
        """Shared beyond the null or not, held out or only fitted, more than the mean or not
        (:func:`explorer.metrics.verdict.judge`; k defaults to min(16, d/4))."""
        return judge(self.spectrum, self.metrics, k, p_adjusted)

    def random_subspace(self) -> np.ndarray:
        """k/d for k = 1..d: what a random k-dim subspace captures (and overlaps) in expectation."""
        d = len(self.spectrum.eigenvalues)
        return random_subspace_expectation(d, np.arange(1, d + 1))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the ``analyze --json`` schema, version 1; keys only added)."""
        sp = self.spectrum
        out = {
            "schema": "subspace-explorer/analysis/1",
            "engine_version": self.engine_version,
            "explorer_version": _pkg_version,
            "family": self.family,
            "source": self.source,
            "models": self.models,
            "layer": {
                "name": self.group.name,
                "tensor": self.group.tensor,
                "shape": list(self.group.shape),
                "dtype": self.group.dtype,
            },
            "view": self.view,
            "mode": sp.mode,
            "options": asdict(self.options),
            "total_energy": sp.total,
            "singular_values": sp.singular_values.tolist(),
            "evr": sp.evr.tolist(),
            "cumulative_evr": sp.cumulative.tolist(),
            "k_at": self.k_at(),
            "cache_key": self.cache_key,
            "skipped": [s.to_json() for s in self.skipped],
        }
        if self.metrics is not None:
            out["metrics_options"] = asdict(self.metrics_options) if self.metrics_options else None
            out["metrics"] = self.metrics.summary()
            out["per_model"] = self._per_model()
            out["verdict"] = self.verdict().to_json()
        return out
