"""Merge chosen models of a family, layer group by layer group, by one rule (:mod:`merge_rules`).

Task vectors: a dense group of a family with a base model is merged in view ``delta``
(tau_i = W_i - W_base); without a base, in view ``full`` (tau_i = W_i: the "base" is zero, said in a
note); a LoRA group's task vector is its update tau_i = s_i B_i A_i.  A dense group's bias vector,
when the models hold one, is merged by the same element-wise rule (the subspace rule averages it).
The subspace rule uses the shared basis of the *whole* family (the cached analysis of the group's
view; LoRA: views A and B), so merging a subset does not refit anything.

JSON (``merge --json``): schema ``subspace-explorer/merge/1``: ``{family, source, method, rule, k,
models, groups: [{layer, kind, view, k, rank, norm, notes}], accuracy, skipped, notes}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from explorer.apply.basis import SharedBasis, model_matrices, shared_basis
from explorer.apply.merge_rules import MergeOptions, merge_coefficients, merge_elementwise
from explorer.catalog.groups import LayerGroup, build_catalog, check_group, find_group
from explorer.core.errors import InputError, OptionError
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache
from explorer.sources.family import Family, Skipped

MERGE_SCHEMA = "subspace-explorer/merge/1"


@dataclass(eq=False)
class MergedGroup:
    """One layer group merged: the merged task vector and what it is added to.

    Attributes
    ----------
    group : LayerGroup
    view : str
        ``delta``, ``full`` (dense) or ``dW`` (LoRA update).
    tau : Tensor, shape (m, n), float64
        The merged task vector (LoRA: the merged update).
    base : Tensor (m, n) or None
        The base weight it is added to (None: ``full`` view without a base, tau is the weight).
    factors : (A (r, n), B (m, r)) or None
        The LoRA subspace merge's factors (tau = B A, scale 1).
    bias : Tensor (m,) or None
        The merged bias (a dense group whose models hold ``<group>.bias``), added to the base's.
    base_bias : Tensor (m,) or None
    k : int or None
        Directions of the subspace rule.
    """

    group: LayerGroup
    view: str
    tau: torch.Tensor
    base: torch.Tensor | None = None
    factors: tuple[torch.Tensor, torch.Tensor] | None = None
    bias: torch.Tensor | None = None
    base_bias: torch.Tensor | None = None
    k: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def weight(self) -> torch.Tensor:
        """The merged layer's weight: base + tau (or tau itself without a base)."""
        return self.tau if self.base is None else self.base + self.tau

    def merged_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return self.bias if self.base_bias is None else self.base_bias + self.bias

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.group.name, "kind": self.group.kind, "view": self.view, "k": self.k,
                "rank": int(self.factors[0].shape[0]) if self.factors is not None else None,
                "norm": float(torch.linalg.norm(self.tau)), "notes": list(self.notes)}


@dataclass(eq=False)
class Merged:
    """The chosen models of one family merged by one rule, group by group."""

    family: str
    source: str
    models: tuple[str, ...]
    options: MergeOptions
    groups: list[MergedGroup]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": MERGE_SCHEMA, "family": self.family, "source": self.source, "method": self.options.method,
                "rule": self.options.rule(), "k": self.options.k, "lambda": self.options.scale,
                "density": self.options.density if self.options.method == "ties" else None,
                "models": list(self.models), "groups": [g.to_json() for g in self.groups],
                "skipped": [s.to_json() for s in self.skipped], "notes": list(self.notes)}


def chosen_family(family: Family, models: Sequence[str] | None) -> Family:
    """``family`` restricted to ``models`` (default all), in the family's order.

    Raises
    ------
    OptionError
        An unknown name (naming it), or fewer than one model.
    """
    if not models:
        return family
    names = {m.name for m in family.models}
    unknown = [n for n in models if n not in names]
    if unknown:
        shown = ", ".join(sorted(names)[:5])
        raise OptionError(f"{family.source}: has no model {unknown[0]!r} (it has {shown}{' ...' if len(names) > 5 else ''})")
    keep = set(models)
    return family.without({m.name: "not chosen for the merge" for m in family.models if m.name not in keep}) \
        if len(keep) < len(family) else family


def merge_groups(family: Family, layers: Sequence[str] | None) -> list[LayerGroup]:
    """The groups to merge: the named ones (default every group held by every model), each
    checked against every chosen model (a model lacking it or holding another shape is named)."""
    catalog = build_catalog(family)
    groups = [find_group(catalog, n) for n in layers] if layers else \
        [g for g in catalog if g.n_models == len(family)]
    if not groups:
        raise OptionError(f"{family.source}: no layer group is held by every chosen model")
    for g in groups:
        check_group(family, g)
    return groups


def _bias(family: Family, g: LayerGroup) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
    """The models' bias vectors of a dense group and the base's, when every model holds one."""
    name = f"{g.name}.bias"
    if g.kind != "dense" or not all(family.has_tensor(m, name) for m in family.models):
        return None
    vs = [family.tensor(m, name).double() for m in family.models]
    if any(tuple(v.shape) != (g.shape[0],) for v in vs):
        return None
    base = family.tensor(family.base, name).double() if family.base is not None and \
        family.has_tensor(family.base, name) else None
    return vs, base


def _subspace(sb: SharedBasis, mats: list[torch.Tensor], k: int | None) -> tuple[torch.Tensor, int]:
    kk = sb.k_for(k if k is not None else None, 0.9 if k is None else None)
    return sb.rebuild(merge_coefficients([sb.coefficients(w, kk) for w in mats])), kk


def _fit(whole: Family, g: LayerGroup, view: str, spectral: SpectralOptions, cache, strict) -> SharedBasis:
    res = analyze_cached(whole, g.name, view, spectral, metrics=None, cache=cache, strict=strict)
    return shared_basis(whole, res)


def merge_family(family: Family, models: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                 options: MergeOptions = MergeOptions(), spectral: SpectralOptions = SpectralOptions(),
                 cache: ResultCache | None = None, strict: bool = False) -> Merged:
    """Merge ``models`` of ``family`` (default all) in ``layers`` (default every group).

    Raises
    ------
    OptionError
        Unknown models or groups, a k above a basis.
    InputError
        A chosen model lacking a group or holding it with another shape (naming it).
    """
    fam = chosen_family(family, models)
    out = []
    for g in merge_groups(fam, layers):
        notes: list[str] = []
        if g.kind == "lora":
            taus = [s_b_a for s_b_a in _updates(fam, g)]
            if options.method != "subspace":
                out.append(MergedGroup(g, "dW", merge_elementwise(taus, options), notes=notes))
                continue
            ranks = sorted({int(fam.headers[m.name][g.tensor].shape[0]) for m in fam.models})
            r = ranks[-1]
            if len(ranks) > 1:
                # Factor i's coefficients are averaged row by row (A) and column by column (B): an
                # adapter of lower rank contributes zero rows / columns beyond its own.
                notes.append(f"ranks {', '.join(map(str, ranks))}: factors zero-padded to rank {r} before averaging")
            sa, sbb = _fit(family, g, "A", spectral, cache, strict), _fit(family, g, "B", spectral, cache, strict)
            a_mats = [_pad(w, r, 0) for _, w in model_matrices(fam, g, "A")]
            scales = [fam.lora_scale(m, g.name) for m in fam.models]
            b_mats = [s * _pad(w, r, 1) for s, (_, w) in zip(scales, model_matrices(fam, g, "B"))]
            a_hat, ka = _subspace(sa, a_mats, options.k)
            b_hat, kb = _subspace(sbb, b_mats, options.k)
            if ka != kb:
                notes.append(f"k(0.9) is {ka} for A and {kb} for B")
            out.append(MergedGroup(g, "dW", b_hat @ a_hat, factors=(a_hat, b_hat), k=min(ka, kb), notes=notes))
            continue
        view = "delta" if fam.base is not None and g.in_base else "full"
        mats = [w for _, w in model_matrices(fam, g, view)]
        base = fam.tensor(fam.base, g.tensor).double() if view == "delta" else None
        if view == "full":
            notes.append("no base model: the task vectors are the weights themselves")
        bias = _bias(fam, g)
        if options.method == "subspace":
            tau, k = _subspace(_fit(family, g, view, spectral, cache, strict), mats, options.k)
            mb = None
            if bias is not None:
                notes.append("the bias is averaged (it has no shared basis)")
                mb = torch.stack([v - (bias[1] if bias[1] is not None else 0) for v in bias[0]]).mean(0)
        else:
            tau, k = merge_elementwise(mats, options), None
            mb = merge_elementwise([v - (bias[1] if bias[1] is not None else 0) for v in bias[0]], options) \
                if bias is not None else None
        out.append(MergedGroup(g, view, tau, base, bias=mb, base_bias=bias[1] if bias is not None else None,
                               k=k, notes=notes))
    notes = [f"{len(fam)} models merged by {options.method}: {options.rule()}"]
    notes += [f"{mg.group.name}: {n}" for mg in out for n in mg.notes]
    return Merged(family.name, family.source, tuple(m.name for m in fam.models), options, out,
                  list(family.skipped), notes)


def _pad(w: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """A factor zero-padded to rank r along ``dim`` (rows of A: 0, columns of B: 1)."""
    missing = r - w.shape[dim]
    if missing <= 0:
        return w
    pad = w.new_zeros((missing, w.shape[1]) if dim == 0 else (w.shape[0], missing))
    return torch.cat([w, pad], dim=dim)


def _updates(fam: Family, g: LayerGroup) -> list[torch.Tensor]:
    """Each chosen adapter's update s B A (m x n, float64)."""
    out = []
    for m in fam.models:
        a = fam.tensor(m, g.tensor).double()
        b = fam.tensor(m, g.b_tensor).double()
        out.append(fam.lora_scale(m, g.name) * (b @ a))
    return out


def numerical_factors(tau: torch.Tensor, rtol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, n), B (m, r)) with B A = tau to rounding: the SVD kept above ``rtol`` * sigma_max.

    A merged update of N rank-r adapters has rank <= N r (TIES' trimming can raise it to
    min(m, n)); its exact factors are what a PEFT adapter needs.
    """
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        raise InputError("the merged update is zero: there is nothing to write as an adapter")
    r = int((s > rtol * s[0]).sum())
    return vh[:r], u[:, :r] * s[:r]


def merged_accuracy_states(merged: Merged, base_state: dict[str, torch.Tensor] | None,
                           layers: Sequence[str]) -> dict[str, torch.Tensor] | None:
    """The effective ``layers.{i}.weight`` / ``.bias`` state of the merged model, for an evaluator.

    Layers not merged keep the base model's tensors; without a base every layer must be merged
    (else None: the unmerged layers have no common value).
    """
    by = {g.group.name: g for g in merged.groups}
    if base_state is None and not set(layers) <= set(by):
        return None
    state = {k: v.double().clone() for k, v in (base_state or {}).items()}
    for name in layers:
        if name not in by:
            continue
        g = by[name]
        w = g.weight if g.group.kind == "dense" else state[f"{name}.weight"] + g.tau
        state[f"{name}.weight"] = w
        b = g.merged_bias()
        if b is not None:
            state[f"{name}.bias"] = b
    return {k: v.float() for k, v in state.items()}

