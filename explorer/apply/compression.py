"""Compress a family: every chosen layer group in its views, the LoRA updates' errors, the totals.

LoRA groups are compressed as SHARE and lorashare do: A in its input space (view A, in-mode)
and B in its output space (view B, out-mode), each with its own k; the error that matters for
the model, that of the update ΔW_i = s_i B_i A_i against s_i B^_i A^_i, is computed from r x r
products (never an m x n matrix):

    ||B A - B^ A^||^2 = tr(B^T B A A^T) - 2 tr(B^T B^ A^ A^T) + tr(B^^T B^ A^ A^^T).

Its mean-only baseline (every update replaced by the family's mean update) needs the mean as a
dense m x n matrix; it is computed while N m n r stays within :data:`MEAN_UPDATE_FLOPS`, else
left out with a note (the A and B views' own mean-only errors are always given).

JSON schema ``subspace-explorer/compress/1``: ``{schema, family, source, dtype, models,
bytes_before, bytes_after, ratio, entries (CompressedView.to_json), updates ({layer, errors,
mean_only_errors, error_mean, mean_only_error_mean}), skipped, notes}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from explorer.apply.basis import APPLY_VIEWS
from explorer.apply.compress import CompressedView, compress_view, store_dtype
from explorer.catalog.groups import LayerGroup, build_catalog, find_group
from explorer.catalog.views import views_for
from explorer.core.errors import OptionError
from explorer.core.progress import ProgressFn
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache
from explorer.sources.family import Family, Skipped

COMPRESS_SCHEMA = "subspace-explorer/compress/1"
#: Most multiply-adds spent on the mean-update baseline of one LoRA group (N m n r).
MEAN_UPDATE_FLOPS = 2e10


@dataclass(eq=False)
class UpdateErrors:
    """The LoRA update's relative errors of one group, compressed through its A and B views."""

    layer: str
    names: tuple[str, ...]
    errors: np.ndarray
    mean_errors: np.ndarray | None

    def to_json(self) -> dict[str, Any]:
        def js(a):
            return {n: (float(e) if np.isfinite(e) else None) for n, e in zip(self.names, a)}

        fin = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else None  # noqa: E731
        return {"layer": self.layer, "errors": js(self.errors), "error_mean": fin(self.errors),
                "mean_only_errors": None if self.mean_errors is None else js(self.mean_errors),
                "mean_only_error_mean": None if self.mean_errors is None else fin(self.mean_errors)}


@dataclass(eq=False)
class Compression:
    """Every compressed (group, view) of one family, and what the compression cost and kept."""

    family: str
    source: str
    dtype: str
    models: tuple[str, ...]
    entries: list[CompressedView]
    updates: list[UpdateErrors] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_before(self) -> int:
        return int(sum(int(e.stored_bytes.sum()) for e in self.entries))

    @property
    def bytes_after(self) -> int:
        return int(sum(e.bytes_after(self.dtype) for e in self.entries))

    def entry(self, layer: str, view: str) -> CompressedView:
        for e in self.entries:
            if e.layer == layer and e.view == view:
                return e
        raise OptionError(f"{layer} view {view} was not compressed here")

    def truncated(self, k: int, family: Family) -> Compression:
        """The same compression at k directions per (group, view) (fewer where one keeps fewer),
        the LoRA update errors recomputed from ``family``'s factors."""
        entries = [e.truncated(min(k, e.k)) for e in self.entries]
        updates, notes = [], [n for n in self.notes if "mean-update baseline" not in n]
        for u in self.updates:
            a = next(e for e in entries if e.layer == u.layer and e.view == "A")
            b = next(e for e in entries if e.layer == u.layer and e.view == "B")
            new, more = update_errors(family, a, b)
            updates.append(new)
            notes.extend(more)
        return replace(self, entries=entries, updates=updates, notes=notes)

    def to_json(self) -> dict[str, Any]:
        after = self.bytes_after
        return {"schema": COMPRESS_SCHEMA, "family": self.family, "source": self.source, "dtype": self.dtype,
                "models": list(self.models), "bytes_before": self.bytes_before, "bytes_after": after,
                "ratio": self.bytes_before / after if after else None,
                "entries": [e.to_json(self.dtype) for e in self.entries],
                "updates": [u.to_json() for u in self.updates],
                "skipped": [s.to_json() for s in self.skipped], "notes": list(self.notes)}


def compress_plan(family: Family, layers: Sequence[str] | None = None,
                  views: Sequence[str] | None = None) -> list[tuple[LayerGroup, str]]:
    """The (group, view) pairs to compress: the named groups (default: every group held by every
    model; for adapters, every LoRA group — their dense heads stay as stored), LoRA ones in views A
    and B, dense ones in ``full``, unless ``views`` says otherwise.

    Raises
    ------
    OptionError
        An unknown group, a view that does not apply (dW included: compress through A and B),
        or nothing to compress.
    """
    bad = [v for v in (views or ()) if v not in APPLY_VIEWS]
    if bad:
        raise OptionError(f"view {bad[0]!r} cannot be compressed; use {', '.join(APPLY_VIEWS)} "
                          "(a LoRA update ΔW is compressed through its factors: views A and B)")
    catalog = build_catalog(family)
    groups = [find_group(catalog, name) for name in layers] if layers else \
        [g for g in catalog if g.n_models == len(family)]
    if not layers and any(g.kind == "lora" for g in groups):
        # Adapters' own dense tensors (a classifier head saved with modules_to_save) are part of each
        # adapter, not of a shared update: --all compresses the LoRA groups and keeps those as stored.
        groups = [g for g in groups if g.kind == "lora"]
    plan = []
    for g in groups:
        have = [v for v in views_for(family, g) if v in APPLY_VIEWS]
        wanted = list(views) if views else (["A", "B"] if g.kind == "lora" else [have[0]])
        chosen = [v for v in wanted if v in have]
        if not chosen:
            raise OptionError(f"{g.name}: view {' or '.join(wanted)} does not apply; it has {', '.join(have)}")
        plan.extend((g, v) for v in chosen)
    if not plan:
        raise OptionError(f"{family.source}: no layer group is held by every model")
    return plan


def update_errors(family: Family, a: CompressedView, b: CompressedView) -> tuple[UpdateErrors, list[str]]:
    """Relative error of each adapter's update s B^ A^ against s B A (and of the mean update)."""
    group = a.basis.group
    names = [n for n in a.names if n in set(b.names)]
    ia, ib = {n: i for i, n in enumerate(a.names)}, {n: i for i, n in enumerate(b.names)}
    by_name = {m.name: m for m in family.models}
    m_, n_ = group.shape
    r = max((int(family.headers[n][group.tensor].shape[0]) for n in names), default=0)
    with_mean = len(names) * m_ * n_ * r <= MEAN_UPDATE_FLOPS
    errors = np.zeros(len(names))
    kept_a, kept_b, norms2 = [], [], []
    for j, name in enumerate(names):
        ref = by_name[name]
        s = family.lora_scale(ref, group.name)
        a0 = family.tensor(ref, group.tensor).double()
        b0 = family.tensor(ref, group.b_tensor).double()
        a1, b1 = a.rebuild(ia[name]), b.rebuild(ib[name])
        xx = float(((b0.T @ b0) * (a0 @ a0.T)).sum())
        cross = float(((b0.T @ b1) * (a0 @ a1.T)).sum())
        yy = float(((b1.T @ b1) * (a1 @ a1.T)).sum())
        errors[j] = float(np.sqrt(max(xx - 2 * cross + yy, 0.0) / xx)) if xx > 0 else float("nan")
        if with_mean:
            kept_a.append(a0)
            kept_b.append(s * b0)
            norms2.append(xx * s * s)
    notes, mean_errors = [], None
    if with_mean and names:
        # Stacked factors: the mean update in one product, each <s B A, mu> from one more.
        bs, as_ = torch.cat(kept_b, dim=1), torch.cat(kept_a, dim=0)       # (m, sum r), (sum r, n)
        mu = (bs @ as_) / len(names)
        mm = float((mu * mu).sum())
        rows = ((bs.T @ mu) * as_).sum(dim=1)                               # (sum r,)
        inner = torch.stack([c.sum() for c in torch.split(rows, [t.shape[0] for t in kept_a])]).numpy()
        xx = np.array(norms2)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_errors = np.where(xx > 0, np.sqrt(np.clip(xx - 2 * inner + mm, 0.0, None) / xx), np.nan)
    elif names:
        notes.append(f"{group.name}: the mean-update baseline was skipped ({len(names)} updates of {m_}x{n_} "
                     f"at rank {r} exceed {MEAN_UPDATE_FLOPS:.0e} multiply-adds); the A and B views' mean-only "
                     "errors are given")
    return UpdateErrors(group.name, tuple(names), errors, mean_errors), notes


def compress_family(family: Family, layers: Sequence[str] | None = None, k: int | None = None,
                    tau: float | None = None, views: Sequence[str] | None = None,
                    options: SpectralOptions = SpectralOptions(), dtype: str = "float32",
                    cache: ResultCache | None = None, progress: ProgressFn | None = None,
                    strict: bool = False) -> Compression:
    """Compress every planned (group, view) of ``family`` (:func:`compress_plan`).

    Each basis comes from the cached analysis of its (group, view) — the spectrum alone, without
    metrics — in the view's own mode unless ``options.mode`` says otherwise.

    Parameters
    ----------
    family : Family
    layers : list of str, optional
        Group names (default: every group held by every model).
    k, tau
        Exactly one: directions kept per (group, view), or the cumulative EVR each must reach.
    views : list of str, optional
    options : SpectralOptions
        Centring, dtype, device of the fits.
    dtype : {"float32", "float64"}
        What the stored form is counted (and written) in.
    progress : callable(done, total, label), optional
        Once per model of each (group, view).

    Returns
    -------
    Compression
    """
    store_dtype(dtype)
    if (k is None) == (tau is None):
        raise OptionError("give --k K or --tau T (one of them)")
    plan = compress_plan(family, layers, views)
    entries, skipped = [], {s.name: s for s in family.skipped}
    for g, v in plan:
        res = analyze_cached(family, g.name, v, options, metrics=None, cache=cache, strict=strict)
        for s in res.skipped:
            skipped.setdefault(s.name, s)
        entries.append(compress_view(family, res, k, tau, progress))
    updates, notes = [], []
    for g in dict.fromkeys(g for g, _ in plan):
        pair = [e for e in entries if e.layer == g.name and e.view in ("A", "B")]
        if g.kind == "lora" and len(pair) == 2:
            a, b = sorted(pair, key=lambda e: e.view)
            if a.basis.mode == "in" and b.basis.mode == "out":
                u, more = update_errors(family, a, b)
                updates.append(u)
                notes.extend(more)
    used = set().union(*(set(e.names) for e in entries)) if entries else set()
    models = tuple(m.name for m in family.models if m.name in used)
    for e in entries:
        notes.extend(f"{e.layer} {e.view}: {n}" for n in e.notes)
    return Compression(family.name, family.source, dtype, models, entries, updates, list(skipped.values()), notes)

