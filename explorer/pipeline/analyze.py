"""The one pipeline the app and the CLI share: family + layer group + options -> Analysis.

:func:`analyze` computes; :func:`analyze_cached` does the same through the content-addressed
disk cache (:mod:`explorer.pipeline.cache`) from small hashable arguments only, so a Streamlit page can
wrap it in ``st.cache_data`` keyed by those arguments; :func:`cache_key` prints the key.

Bad members are skipped and named, one policy for every kind: those that cannot be loaded are
already in ``Family.skipped``; a member whose data for the analysed group holds NaN or Inf (only
reading it shows that) is left out when it is found, and the analysis starts again without it.
Both end up in ``Analysis.skipped``.  ``strict=True`` refuses instead, naming the first.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch

from explorer.catalog.groups import LayerGroup, build_catalog, find_group
from explorer.catalog.views import (
    FactorStream,
    default_mode,
    default_view,
    held,
    stream_for_view,
    timed,
)
from explorer.cluster.connect import connect
from explorer.cluster.passes import ClusterPasses
from explorer.cluster.tasks import run_tasks
from explorer.core.backend import pick_device
from explorer.core.errors import MemberError
from explorer.core.progress import ProgressFn
from explorer.core.threads import FairShare, heavy_slot, is_small
from explorer.core.timing import stage
from explorer.engine import memory
from explorer.engine.dense import decompose, decompose_gram
from explorer.engine.factored import decompose_factored
from explorer.engine.model_gram import decompose_kernel, family_row_reader, model_kernel
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.engine.plan import make_plan
from explorer.metrics.passes import compute_metrics
from explorer.metrics.results import MetricsOptions
from explorer.metrics.local_passes import side_sums
from explorer.pipeline.cache import ResultCache, family_fingerprint, make_key
from explorer.pipeline.result import ENGINE_VERSION, Analysis
from explorer.pipeline.result_io import SCHEMA as RESULT_SCHEMA
from explorer.pipeline.result_io import from_payload, to_payload
from explorer.sources.family import Family, Skipped, check_strict
from explorer.sources.resolve import load_family

__all__ = ["Analysis", "ENGINE_VERSION", "SpectrumFn", "analysis_payload", "analyze", "analyze_cached", "cache_key"]

SpectrumFn = Callable[[Spectrum], None]
"""Hears of the spectrum as soon as it is decomposed (:func:`analyze`'s ``on_spectrum``)."""


def _spectrum(stream, options: SpectralOptions, progress: ProgressFn | None, row_reader=None) -> Spectrum:
    """The engine call: the factored engine for LoRA dW (a FactorStream), else the dense one.

    The stream's ``open`` itself (not one iterator) is handed over, so the engine may take the
    several passes its randomized path needs.  ``row_reader`` lets model mode read row blocks of
    every file directly instead of re-reading whole models once per block.
    """
    if isinstance(stream, FactorStream):
        return decompose_factored(stream.open, stream.n_models, stream.shape, options, progress, ranks=stream.ranks)
    return decompose(stream.open, stream.n_models, stream.shape, options, progress, row_reader=row_reader)


def _model_spectrum(stream, options: SpectralOptions, progress: ProgressFn | None,
                    row_reader=None) -> tuple[Spectrum, torch.Tensor]:
    """Model mode: the raw kernel K (N x N) built once, and its spectrum.

    The same K is handed to the metrics (``compute_metrics(kernel=K)``), so a model-mode analysis
    reads every model once.  Same numbers as :func:`_spectrum` (the engine's own two steps).
    """
    kernel = model_kernel(stream.open, stream.n_models, stream.shape, options, progress, row_reader=row_reader)
    method = "factored" if isinstance(stream, FactorStream) else "exact"
    return decompose_kernel(kernel, stream.n_models, stream.shape, options, method=method), kernel


def _forms_gram(stream, options: SpectralOptions) -> bool:
    """Whether the engine would accumulate the d x d Gram (solver ``gram``) for this stream."""
    factored = isinstance(stream, FactorStream)
    plan = make_plan(stream.shape, stream.n_models, options, ranks=stream.ranks if factored else None,
                     factored=factored)
    return plan.solver == "gram"


def _resolve(family: Family, layer: str | LayerGroup, view: str | None,
             options: SpectralOptions) -> tuple[LayerGroup, str, SpectralOptions]:
    """The group, the view (the group's default when None) and options with a concrete mode.

    A mode left unchosen (None) becomes the view's (:func:`default_mode`: ``in`` for A, ``out``
    otherwise) here, before the cache key is made, so that the key, the stored entry and the JSON
    all name the mode that was computed, and an explicit mode always wins.
    """
    group = layer if isinstance(layer, LayerGroup) else find_group(build_catalog(family), layer)
    if view is None:
        view = default_view(family, group)
    return group, view, options.resolved(default_mode(view))


def analyze(
    family: Family,
    layer: str | LayerGroup,
    *,
    view: str | None = None,
    options: SpectralOptions = SpectralOptions(),
    progress: ProgressFn | None = None,
    metrics: MetricsOptions | None = MetricsOptions(),
    strict: bool = False,
    scheduler: str | None = None,
    on_spectrum: SpectrumFn | None = None,
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
        With ``mode=None`` (the default) the view's mode is used: ``in`` for ``A`` (its rows span
        the input space), ``out`` for every other view; ``Analysis.options.mode`` and
        ``Analysis.spectrum.mode`` record the mode used.
    progress : callable(done, total, label), optional
        Called once per model read (the engine's pass, then the two metrics passes).
    metrics : MetricsOptions or None
        None computes the spectrum only (one pass).
    strict : bool
        Refuse a family that has skipped members, or a member whose data holds NaN or Inf,
        instead of leaving them out (``Analysis.skipped`` lists what was left out).
    scheduler : str, optional
        Address of a Dask scheduler (``tcp://host:8786``): the models are read and summed on its
        workers (:mod:`explorer.cluster`), by shards of models for an out/in-mode Gram, else the
        whole analysis as one task on a worker.  The result is the local one (float64
        eigenvalues within 1e-12 relative), under the same cache key.
    on_spectrum : callable(Spectrum), optional
        Called with the spectrum as soon as it is decomposed, before the metrics (which take most
        of the time at real size): the app draws the scree from it while the null band and the
        held-out curves are computed.  Called again if a member with NaN/Inf data restarts the
        analysis; not called for an analysis run whole as one cluster task.

    Raises
    ------
    InputError
        For bad input; with ``strict``, one line naming the first bad member and why.
    """
    if strict:
        check_strict(family.source, family.skipped)
    group, view, options = _resolve(family, layer, view, options)
    client = connect(scheduler) if scheduler else None
    heavy = not is_small(group.shape, len(family.models), pick_device(options.device).type)
    waiting = None if progress is None else (lambda: progress(0, 1, "waiting for another analysis to finish"))
    # The thread count is revised at each stage (a browser's start-up is not a competing job).
    with heavy_slot(heavy, on_wait=waiting), FairShare(heavy):
        return _analyze_retrying(family, group, view, options, progress, metrics, strict, client, on_spectrum)


def _analyze_retrying(family: Family, group: LayerGroup, view: str, options: SpectralOptions,
                      progress: ProgressFn | None, metrics: MetricsOptions | None, strict: bool,
                      client=None, on_spectrum: SpectrumFn | None = None) -> Analysis:
    """:func:`analyze` after resolving: leave out each member found with NaN/Inf data, and retry."""
    while True:
        try:
            return _analyze_once(family, group, view, options, progress, metrics, client, on_spectrum)
        except MemberError as exc:
            if exc.member not in {m.name for m in family.models}:
                raise  # the base model: not a member that can be left out
            found = Skipped(exc.member, exc.path, str(exc))
            if strict:
                check_strict(family.source, [found])
            # The passes so far included the member: start again without it (once per bad member;
            # a family left with no model raises, naming the members skipped).
            family = family.skip([found])


def _one_task(family: Family, group: LayerGroup, view: str, options: SpectralOptions,
              metrics: MetricsOptions | None) -> Analysis:
    """One whole analysis, here (a cluster worker runs this for a group not split into shards)."""
    return _analyze_once(family, group, view, options, None, metrics)


def _analyze_once(family: Family, group: LayerGroup, view: str, options: SpectralOptions,
                  progress: ProgressFn | None, metrics: MetricsOptions | None, client=None,
                  on_spectrum: SpectrumFn | None = None) -> Analysis:
    """One attempt of :func:`analyze`; raises MemberError at the first member with NaN/Inf data.

    With a cluster ``client``, an out/in-mode Gram with metrics is summed by shards on the
    workers (:class:`ClusterPasses`); any other analysis runs whole as one task on a worker.
    """
    stream = stream_for_view(family, group, view)
    if metrics is not None:
        # Three passes (decomposition, two metrics passes): read the files once when the
        # factors fit an eighth of the metrics budget (262 MB at the default: 500 adapters' side).
        stream = held(stream, metrics.max_memory_mb * 2**20 // 8)
    stream = timed(stream)
    # Mixed-rank padding and the memory guard: refuse before any tensor is read.
    what = f"view {view!r} of {group.name!r}"
    stream.check(options.mode, options.center, what)
    memory.check(stream.shape, stream.n_models, options.mode, what, options=options, metrics=metrics,
                 ranks=stream.ranks)
    passes = None
    if client is not None:
        if metrics is None or options.mode == "model" or not _forms_gram(stream, options):
            jobs = [(family, group, view, options, metrics)]
            return next(run_tasks(client, _one_task, jobs, progress, f"analysing {group.name} on the cluster"))[1]
        passes = ClusterPasses(client, family, group, view)
    row_reader = None
    if options.mode == "model" and view in ("full", "delta"):
        row_reader = family_row_reader(family, group.tensor, base=family.base if view == "delta" else None)
    kernel = sums = None
    labels = [m.label_dict for m in family.models]
    with stage("decomposition"):
        if options.mode == "model":
            spectrum, kernel = _model_spectrum(stream, options, progress, row_reader)
        elif metrics is not None and _forms_gram(stream, options):
            # The metrics' first pass sums the same Gram per fold: build it once, decompose its total.
            sums = side_sums(stream.open, stream.n_models, stream.shape, options, metrics, labels, progress, passes)
            spectrum = decompose_gram(sums.gram, sums.side_sum, stream.n_models, stream.shape, options,
                                      method="factored" if isinstance(stream, FactorStream) else "exact")
        else:
            spectrum = _spectrum(stream, options, progress, row_reader)
    result = None
    if metrics is not None:
        if on_spectrum is not None:
            on_spectrum(spectrum)
        # A FactorStream yields LowRank items, which the metrics passes keep factored; in model
        # mode the decomposition's kernel is reused and no model is read again.
        with stage("metrics"):
            result = compute_metrics(stream.open, stream.n_models, stream.shape, spectrum.basis, options, metrics,
                                     labels, progress, null_ranks=stream.ranks, kernel=kernel, sums=sums,
                                     null_widths=getattr(stream, "widths", None), passes=passes)
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
        skipped=list(family.skipped),
    )


def analysis_payload(family: Family, group: LayerGroup, view: str, options: SpectralOptions,
                     metrics: MetricsOptions | None, strict: bool = False):
    """The cache payload of one analysis computed here: a cluster worker's task in an atlas."""
    return to_payload(analyze(family, group, view=view, options=options, metrics=metrics, strict=strict))


def _key_for(family: Family, group: LayerGroup, view: str, options: SpectralOptions,
             metrics: MetricsOptions | None) -> str:
    return make_key(
        "analysis",
        ENGINE_VERSION,
        RESULT_SCHEMA,  # a change of the stored layout is never served from an older entry
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
    names and labels, the layer group, view, options and :data:`ENGINE_VERSION`.  A mode left
    unchosen is the view's (as in :func:`analyze`): the key of ``mode=None`` with view ``A`` is
    the key of ``mode="in"``.
    """
    family = load_family(source) if isinstance(source, str) else source
    group, view, options = _resolve(family, layer, view, options)
    return _key_for(family, group, view, options, metrics)


def analyze_cached(
    source: str | Family,
    layer: str,
    view: str | None = None,
    options: SpectralOptions = SpectralOptions(),
    metrics: MetricsOptions | None = MetricsOptions(),
    progress: ProgressFn | None = None,
    cache: ResultCache | None = None,
    *,
    strict: bool = False,
    scheduler: str | None = None,
    on_spectrum: SpectrumFn | None = None,
) -> Analysis:
    """:func:`analyze` through the disk cache, from small hashable arguments only.

    Concurrent callers with the same key (other app sessions, processes) wait while one of them
    computes, then read its result.  A hit and a miss return identical arrays (both are read back
    from the stored entry).  ``progress`` is called only when something is computed.
    ``strict`` refuses a family with bad members (see :func:`analyze`), on a hit too.  A mode
    left unchosen (``options.mode`` None) is the view's, resolved before the key is made, so
    the entry, ``result.options.mode`` and the JSON name the mode computed.  ``on_spectrum`` (see
    :func:`analyze`) is called only when the analysis is computed here.
    """
    # A Family (e.g. loaded with a base model or a name regex) is used as it is.
    family = source if isinstance(source, Family) else load_family(source, progress=progress, strict=strict)
    if strict:
        check_strict(family.source, family.skipped)
    group, view, options = _resolve(family, layer, view, options)
    key = _key_for(family, group, view, options, metrics)
    store = cache or ResultCache()
    payload, hit = store.get_or_compute(
        key, lambda: to_payload(analyze(family, group, view=view, options=options, progress=progress,
                                        metrics=metrics, strict=strict, scheduler=scheduler,
                                        on_spectrum=on_spectrum))
    )
    result = from_payload(*payload)
    result.cache_key, result.from_cache = key, hit
    # The key covers the models that loaded, not the members that failed to: those are this
    # family's own (an entry is shared with the same models loaded without the broken files).
    # Members left out for NaN/Inf data are models the key covers, so the entry's list holds.
    names = {m.name for m in family.models}
    result.skipped = list(family.skipped) + [s for s in result.skipped if s.name in names]
    if strict:
        check_strict(family.source, result.skipped)
    return result
