"""The one pipeline the app and the CLI share: family + layer group + options -> Analysis.

:func:`analyze` computes; :func:`analyze_cached` does the same through the content-addressed
disk cache (:mod:`explorer.cache`) from small hashable arguments only, so a Streamlit page can
wrap it in ``st.cache_data`` keyed by those arguments; :func:`cache_key` prints the key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import __version__ as _pkg_version
from .cache import ResultCache, family_fingerprint, make_key
from .catalog import LayerGroup, build_catalog, find_group
from .family import Family
from .metrics import TAUS, Metrics, MetricsOptions, energy_at, k_table
from .metrics_pass import compute_metrics
from .nulls import random_subspace_expectation  # noqa: F401  (re-exported)
from .spectral import ProgressFn, SpectralOptions, Spectrum, decompose
from .views import VIEWS, stream_for_view  # noqa: F401  (VIEWS re-exported)

# Bump whenever a change to the engine or the metrics changes any stored number: it is part of
# every cache key, so old entries are simply not found again.
ENGINE_VERSION = "6"
__all__ = ["Analysis", "ENGINE_VERSION", "TAUS", "analyze", "analyze_cached", "cache_key"]


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

    def k_at(self) -> dict[str, int]:
        """k(tau) for the standard thresholds, keyed by ``"0.9"`` etc."""
        return k_table(self.spectrum.cumulative, TAUS)

    def energy_at(self, k: int, kind: str = "one") -> np.ndarray:
        """Per-model captured energy at rank ``k``, shape (N,).

        ``kind``: ``one`` / ``two`` (in-sample one- / two-sided), ``kfold`` / ``loo`` (held-out).
        """
        from .errors import OptionError

        names = {"one": "energy_one", "two": "energy_two", "kfold": "heldout_kfold", "loo": "heldout_loo"}
        if kind not in names:
            raise OptionError(f"energy kind {kind!r} is not one of {', '.join(names)}")
        curves = getattr(self.metrics, names[kind]) if self.metrics is not None else None
        if curves is None:
            raise OptionError(f"energy {kind!r} was not computed for this analysis")
        return energy_at(curves, k)

    def _per_model(self) -> list[dict[str, Any]]:
        """Per model: name, labels, ||W_i||^2 and captured energy at k(0.9) (fitted and held-out)."""
        m = self.metrics
        k = min(self.spectrum.k_at(0.9), m.energy_one.shape[1])
        cols = {"energy_one_sided": m.energy_one, "energy_two_sided": m.energy_two,
                "heldout_kfold": m.heldout_kfold, "heldout_loo": m.heldout_loo}
        rows = []
        for i, name in enumerate(self.models):
            row: dict[str, Any] = {"name": name, "labels": self.labels[i] if i < len(self.labels) else {},
                                   "norm2": float(m.norms2[i]), "k": k}
            for key, a in cols.items():
                if a is not None:
                    row[key] = float(a[i, min(k, a.shape[1]) - 1])
            if m.own_vs_universal is not None:
                row["overlap_with_universal"] = float(m.own_vs_universal[i])
            rows.append(row)
        return rows

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
        }
        if self.metrics is not None:
            out["metrics_options"] = asdict(self.metrics_options) if self.metrics_options else None
            out["metrics"] = self.metrics.summary()
            out["per_model"] = self._per_model()
        return out


def _spectrum(stream, options: SpectralOptions, progress: ProgressFn | None, row_reader=None) -> Spectrum:
    """The engine call: the factored engine for LoRA dW (a FactorStream), else the dense one.

    The stream's ``open`` itself (not one iterator) is handed over, so the engine may take the
    several passes its randomized path needs.  ``row_reader`` lets model mode read row blocks of
    every file directly instead of re-reading whole models once per block.
    """
    if hasattr(stream, "ranks") and hasattr(stream, "dense"):
        try:
            from .factored import decompose_factored
        except ImportError:  # the factored engine is optional: densify one model at a time
            return decompose(stream.dense().open, stream.n_models, stream.shape, options, progress)
        return decompose_factored(stream.open, stream.n_models, stream.shape, options, progress)
    return decompose(stream.open, stream.n_models, stream.shape, options, progress, row_reader=row_reader)


def _resolve(family: Family, layer: str | LayerGroup, view: str | None) -> tuple[LayerGroup, str]:
    group = layer if isinstance(layer, LayerGroup) else find_group(build_catalog(family), layer)
    if view is None:
        from .views import default_view

        view = default_view(family, group)
    return group, view


def analyze(
    family: Family,
    layer: str | LayerGroup,
    *,
    view: str | None = None,
    options: SpectralOptions = SpectralOptions(),
    progress: ProgressFn | None = None,
    metrics: MetricsOptions | None = MetricsOptions(),
) -> Analysis:
    """Decompose one layer group of a family, and compute its metrics and baselines.

    Parameters
    ----------
    family : Family
    layer : str or LayerGroup
        Group name from the catalog (``layers.0``) or the group itself.
    view : {"full", "delta", "A", "B", "dW"}, optional
        Default: ``dW`` for LoRA groups, ``full`` for dense ones.
    options : SpectralOptions
    progress : callable(done, total, label), optional
        Called once per model read (the engine's pass, then the two metrics passes).
    metrics : MetricsOptions or None
        None computes the spectrum only (one pass).
    """
    group, view = _resolve(family, layer, view)
    stream = stream_for_view(family, group, view)
    # Mixed-rank padding and the memory guard: refuse before any tensor is read.
    stream.check(options.mode, options.center, f"view {view!r} of {group.name!r}", options=options, metrics=metrics)
    row_reader = None
    if options.mode == "model" and view in ("full", "delta"):
        from .model_gram import family_row_reader

        row_reader = family_row_reader(family, group.tensor, base=family.base if view == "delta" else None)
    spectrum = _spectrum(stream, options, progress, row_reader)
    labels = [m.label_dict for m in family.models]
    result = None
    if metrics is not None:
        # A FactorStream yields (B, A, s) triples, which the metrics passes keep factored.
        result = compute_metrics(stream.open, stream.n_models, stream.shape, spectrum.basis, options, metrics,
                                 labels, progress, null_ranks=getattr(stream, "ranks", None))
    return Analysis(
        family=family.name,
        source=family.source,
        models=[m.name for m in family.models],
        group=group,
        view=view,
        options=options,
        spectrum=spectrum,
        metrics=result,
        metrics_options=metrics,
        labels=labels,
    )


def _key_for(family: Family, group: LayerGroup, view: str, options: SpectralOptions,
             metrics: MetricsOptions | None) -> str:
    return make_key(
        "analysis",
        ENGINE_VERSION,
        family_fingerprint(family),
        asdict(group),
        view,
        asdict(options),
        asdict(metrics) if metrics is not None else None,
    )


def cache_key(
    source: str | Family,
    layer: str | LayerGroup,
    view: str | None = None,
    options: SpectralOptions = SpectralOptions(),
    metrics: MetricsOptions | None = MetricsOptions(),
) -> str:
    """The content-addressed cache key (sha256 hex) of one analysis.

    It covers every input file's fingerprint (path, size, mtime_ns, header hash), the model
    names and labels, the layer group, view, options and :data:`ENGINE_VERSION`.
    """
    from .sources.resolve import load_family

    family = load_family(source) if isinstance(source, str) else source
    group, view = _resolve(family, layer, view)
    return _key_for(family, group, view, options, metrics)


def analyze_cached(
    source: str | Family,
    layer: str,
    view: str | None = None,
    options: SpectralOptions = SpectralOptions(),
    metrics: MetricsOptions | None = MetricsOptions(),
    progress: ProgressFn | None = None,
    cache: ResultCache | None = None,
) -> Analysis:
    """:func:`analyze` through the disk cache, from small hashable arguments only.

    Concurrent callers with the same key (other app sessions, processes) wait while one of them
    computes, then read its result.  A hit and a miss return identical arrays (both are read back
    from the stored entry).  ``progress`` is called only when something is computed.
    """
    from .result_io import from_payload, to_payload
    from .sources.resolve import load_family

    # A Family (e.g. loaded with a base model or a name regex) is used as it is.
    family = source if isinstance(source, Family) else load_family(source, progress=progress)
    group, view = _resolve(family, layer, view)
    key = _key_for(family, group, view, options, metrics)
    store = cache or ResultCache()
    payload, hit = store.get_or_compute(
        key, lambda: to_payload(analyze(family, group, view=view, options=options, progress=progress, metrics=metrics))
    )
    result = from_payload(*payload)
    result.cache_key, result.from_cache = key, hit
    return result
