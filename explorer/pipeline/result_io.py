"""Serialise an :class:`~explorer.pipeline.analyze.Analysis` to arrays (safetensors) + JSON, and back.

Arrays are named ``spectrum.<field>``, ``metrics.<field>`` and ``metrics.<part>.<field>``; every
other value (names, options, notes, scalars) goes into one JSON document.  The round trip is
exact: arrays keep their dtype and bits, and JSON floats are written with full precision.
"""
from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from typing import Any

import numpy as np

from explorer.catalog.groups import LayerGroup
from explorer.core.errors import InputError
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.metrics.results import PARTS, Metrics, MetricsOptions
from explorer.pipeline.cache import decode, encode
from explorer.pipeline.result import Analysis
from explorer.sources.family import Skipped

# 2: Metrics nested into HeldOut, Overlaps, Groups and NullBand parts (engine version 7).
SCHEMA = "subspace-explorer/result/2"


def _split(obj: Any, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Move ndarray fields of a dataclass into ``arrays``; return the rest as a dict.

    Nested dataclasses (the parts of :class:`Metrics`) are split the same way under
    ``prefix.<field>``; a part that is None stays None in the JSON.
    """
    rest: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, np.ndarray):
            arrays[f"{prefix}.{f.name}"] = v
        elif is_dataclass(v):
            rest[f.name] = _split(v, f"{prefix}.{f.name}", arrays)
        else:
            rest[f.name] = list(v) if isinstance(v, tuple) else v
    return rest


def _gather(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    pre = prefix + "."
    return {k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre) and "." not in k[len(pre):]}


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def to_payload(analysis: Analysis) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split an Analysis into ``(arrays, meta)`` for :mod:`explorer.pipeline.cache` or disk."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "engine_version": analysis.engine_version,
        "family": analysis.family,
        "source": analysis.source,
        "models": list(analysis.models),
        "labels": [dict(lab) for lab in analysis.labels],
        "group": {**asdict(analysis.group), "shape": list(analysis.group.shape)},
        "view": analysis.view,
        "options": asdict(analysis.options),
        "metrics_options": asdict(analysis.metrics_options) if analysis.metrics_options else None,
        "spectrum": _split(analysis.spectrum, "spectrum", arrays),
        "metrics": _split(analysis.metrics, "metrics", arrays) if analysis.metrics is not None else None,
        "skipped": [s.to_json() for s in analysis.skipped],
    }
    return arrays, meta


def from_payload(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Analysis:
    """Rebuild the Analysis written by :func:`to_payload`."""
    if meta.get("schema") != SCHEMA:
        raise InputError(f"result has schema {meta.get('schema')!r}, expected {SCHEMA!r}")
    sp = dict(meta["spectrum"])
    sp.pop("extras", None)  # written by engine versions <= 6
    sp["shape"] = tuple(sp["shape"])
    spectrum = Spectrum(**_gather(arrays, "spectrum"), **sp)
    metrics = None
    if meta.get("metrics") is not None:
        scalars = dict(meta["metrics"])
        parts = {name: None if scalars.get(name) is None else
                 cls(**_gather(arrays, f"metrics.{name}"), **scalars[name])
                 for name, cls in PARTS.items()}
        for name in PARTS:
            scalars.pop(name, None)
        metrics = Metrics(**_gather(arrays, "metrics"), **scalars, **parts)
    # JSON turned the group's tuples into lists; a frozen, hashable LayerGroup needs them back.
    group = {k: _tuplify(v) for k, v in meta["group"].items()}
    mo = meta.get("metrics_options")
    return Analysis(
        family=meta["family"],
        source=meta["source"],
        models=list(meta["models"]),
        group=LayerGroup(**group),
        view=meta["view"],
        options=SpectralOptions(**meta["options"]),
        spectrum=spectrum,
        metrics=metrics,
        metrics_options=MetricsOptions(**mo) if mo else None,
        labels=[dict(lab) for lab in meta.get("labels", [])],
        engine_version=meta["engine_version"],
        skipped=[Skipped.from_json(s) for s in meta.get("skipped", [])],
    )


def save(analysis: Analysis, path: str) -> None:
    """Write an Analysis to one checksummed file (the cache's format)."""
    with open(path, "wb") as fh:
        fh.write(encode(*to_payload(analysis)))


def load(path: str) -> Analysis:
    """Read an Analysis written by :func:`save`.

    Raises
    ------
    InputError
        If the file is damaged or not a result file.
    """
    with open(path, "rb") as fh:
        got = decode(fh.read())
    if got is None:
        raise InputError(f"{path}: not a result file, or its checksum does not match (damaged)")
    return from_payload(*got)
