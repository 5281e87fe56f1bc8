"""The layer catalog: layer groups of a family, built from file headers only.

A *layer group* is one weight matrix position shared by the models of a family, named by its
module path (the canonical tensor name without ``.weight``), e.g. ``model.layers.3.self_attn.q_proj``.
A group is ``dense`` (a stored ``m x n`` weight) or ``lora`` (a module with factors A: r x n and
B: m x r, whose update ΔW = s B A is m x n).  Its *module type* replaces layer numbers by ``{i}``
(``model.layers.{i}.self_attn.q_proj``) so the sidebar can pick types and a layer range.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from explorer.core.errors import InputError
from explorer.sources.family import Family, TensorInfo
from explorer.sources.naming import (
    LORA_A,
    LORA_B,
    canonical_name,
    is_lora_tensor,
    lora_part,
)
from explorer.sources.readers import FLOAT_DTYPES

_NUM = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")


@dataclass(frozen=True)
class LayerGroup:
    """One analysable weight position of a family.

    Attributes
    ----------
    name : str
        Module path, the ``--layer`` value (``layers.0``).
    tensor : str
        Canonical tensor name (``layers.0.weight``; for LoRA groups the A factor's name).
    module_type : str
        ``name`` with its layer number replaced by ``{i}``.
    index : int or None
        Layer number, if the name has one.
    shape : tuple of int
        ``(m, n)``: out-features by in-features (for LoRA, the shape of ΔW).
    dtype : str
        Stored dtype (``F32``, ``F16``, ``BF16``...).
    n_models : int
        How many models of the family hold it with this shape.
    kind : {"dense", "lora"}
    rank : int or None
        LoRA rank when all models share it; ``None`` for dense groups and mixed ranks.
    ranks : tuple of int
        The distinct LoRA ranks across models (empty for dense groups).
    b_tensor : str or None
        Canonical name of the LoRA B factor.
    problems : tuple of (str, str)
        ``(model, reason)`` for each model that lacks the group or holds it with another shape.
    in_base : bool
        The family's base model holds this module as an ``m x n`` weight.
    """

    name: str
    tensor: str
    module_type: str
    index: int | None
    shape: tuple[int, int]
    dtype: str
    n_models: int
    kind: str = "dense"
    rank: int | None = None
    ranks: tuple[int, ...] = ()
    b_tensor: str | None = None
    problems: tuple[tuple[str, str], ...] = ()
    in_base: bool = False

    @property
    def missing(self) -> tuple[str, ...]:
        """Names of the models that cannot be used for this group."""
        return tuple(m for m, _ in self.problems)


def module_type_of(name: str) -> tuple[str, int | None]:
    """Split a module path into its type pattern and its first layer number."""
    nums = _NUM.findall(name)
    return _NUM.sub("{i}", name), (int(nums[0]) if nums else None)


def _majority(entries: dict[str, tuple]) -> tuple:
    # Most common shape; ties go to the shape seen first (model order), which is deterministic.
    counts = Counter(entries.values())
    return max(counts, key=lambda s: (counts[s], -list(entries.values()).index(s)))


def _dense_groups(family: Family, heads: dict[str, dict[str, TensorInfo]]) -> list[LayerGroup]:
    base = family.base_headers
    names: dict[str, None] = {}
    for h in heads.values():
        for t, info in h.items():
            if len(info.shape) == 2 and t.endswith(".weight") and not is_lora_tensor(t):
                names.setdefault(t)
    out = []
    for t in names:
        shapes = {m: h[t].shape for m, h in heads.items() if t in h}
        shape = _majority(shapes)
        problems = []
        for m in heads:
            if m not in shapes:
                problems.append((m, f"tensor {t!r} is missing"))
            elif shapes[m] != shape:
                problems.append((m, f"tensor {t!r} has shape {shapes[m]}, expected {shape}"))
            elif heads[m][t].dtype not in FLOAT_DTYPES:
                problems.append((m, _dtype_problem(t, heads[m][t].dtype)))
            elif min(shape) == 0:
                problems.append((m, f"tensor {t!r} is empty (shape {shape})"))
        good = [m for m in shapes if shapes[m] == shape and heads[m][t].dtype in FLOAT_DTYPES and min(shape) > 0]
        if not good:
            continue  # integer/bool 2-D buffers (masks, indices) are not weights
        name = t[: -len(".weight")]
        mtype, idx = module_type_of(name)
        in_base = t in base and base[t].shape == shape
        out.append(LayerGroup(name, t, mtype, idx, (shape[0], shape[1]), heads[good[0]][t].dtype, len(good),
                              problems=tuple(problems), in_base=in_base))
    return out


def _dtype_problem(tensor: str, dtype: str) -> str:
    return f"tensor {tensor!r} has dtype {dtype}, which cannot be analysed (supported: {', '.join(FLOAT_DTYPES)})"


def _lora_groups(family: Family, heads: dict[str, dict[str, TensorInfo]]) -> list[LayerGroup]:
    base = family.base_headers
    modules: dict[str, None] = {}
    for h in heads.values():
        for t in h:
            part = lora_part(t)
            if part is not None:
                modules.setdefault(part[0])
    out = []
    for mod in modules:
        a_name, b_name = mod + LORA_A, mod + LORA_B
        shapes: dict[str, tuple[int, int]] = {}
        ranks: dict[str, int] = {}
        problems: list[tuple[str, str]] = []
        for m, h in heads.items():
            a, b = h.get(a_name), h.get(b_name)
            if a is None or b is None:
                problems.append((m, f"LoRA factor {a_name if a is None else b_name!r} is missing"))
            elif len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
                problems.append((m, f"LoRA factors of {mod!r} do not fit: A {a.shape}, B {b.shape}"))
            elif min(a.shape + b.shape) == 0:
                problems.append((m, f"LoRA factors of {mod!r} are empty: A {a.shape}, B {b.shape}"))
            elif a.dtype not in FLOAT_DTYPES or b.dtype not in FLOAT_DTYPES:
                problems.append((m, _dtype_problem(a_name if a.dtype not in FLOAT_DTYPES else b_name,
                                                   a.dtype if a.dtype not in FLOAT_DTYPES else b.dtype)))
            else:
                shapes[m] = (b.shape[0], a.shape[1])
                ranks[m] = a.shape[0]
        if not shapes:
            continue
        shape = _majority(shapes)
        for m, s in shapes.items():
            if s != shape:
                problems.append((m, f"LoRA update of {mod!r} has shape {s}, expected {shape}"))
                ranks.pop(m)
        distinct = tuple(sorted(set(ranks.values())))
        first = next(m for m in shapes if shapes[m] == shape)
        mtype, idx = module_type_of(mod)
        in_base = mod + ".weight" in base and base[mod + ".weight"].shape == shape
        order = {m: i for i, m in enumerate(heads)}
        problems.sort(key=lambda p: order[p[0]])
        out.append(LayerGroup(
            mod, a_name, mtype, idx, shape, heads[first][a_name].dtype, len(ranks), kind="lora",
            rank=distinct[0] if len(distinct) == 1 else None, ranks=distinct, b_tensor=b_name,
            problems=tuple(problems), in_base=in_base,
        ))
    return out


def build_catalog(family: Family, complete_only: bool = False) -> list[LayerGroup]:
    """List the 2-D weights and LoRA modules of a family, from headers only.

    Parameters
    ----------
    family : Family
    complete_only : bool
        Keep only groups that every model holds with one shape.

    Returns
    -------
    list of LayerGroup
        Sorted by module type, layer index and name.  A group that some models lack (or hold
        with another shape) is listed with ``n_models < len(family)`` and its ``problems``.

    Raises
    ------
    InputError
        If no group is found.
    """
    heads = family.headers
    groups = _lora_groups(family, heads) + _dense_groups(family, heads)
    if complete_only:
        groups = [g for g in groups if g.n_models == len(family)]
    groups.sort(key=lambda g: (g.module_type, g.index if g.index is not None else -1, g.name, g.kind))
    if not groups:
        raise InputError(f"{family.source}: no 2-D weight tensor is shared by all {len(family)} models")
    return groups


def find_group(catalog: list[LayerGroup], name: str) -> LayerGroup:
    """Return the group called ``name`` (module path, or a stored/canonical tensor name)."""
    canon = canonical_name(name)
    part = lora_part(canon)
    keys = {name, canon, part[0] if part else canon}
    for g in catalog:
        if keys & {g.name, g.tensor, g.b_tensor}:
            return g
    sample = ", ".join(g.name for g in catalog[:6])
    raise InputError(f"layer group {name!r} not found; available: {sample}{' ...' if len(catalog) > 6 else ''}")


def module_types(catalog: Iterable[LayerGroup]) -> list[str]:
    """Distinct module types, in catalog order (for the sidebar's multiselect)."""
    return list(dict.fromkeys(g.module_type for g in catalog))


def layer_indices(catalog: Iterable[LayerGroup], types: Iterable[str] | None = None) -> list[int]:
    """Sorted distinct layer numbers of the groups of the given module types (all if ``None``)."""
    wanted = set(types) if types is not None else None
    return sorted({g.index for g in catalog if g.index is not None and (wanted is None or g.module_type in wanted)})


def select_groups(
    catalog: Iterable[LayerGroup],
    types: Iterable[str] | None = None,
    layers: tuple[int, int] | None = None,
    kind: str | None = None,
) -> list[LayerGroup]:
    """Groups of the chosen module types within an inclusive layer range.

    Parameters
    ----------
    types : iterable of str, optional
        Module types to keep (``model.layers.{i}.self_attn.q_proj``); all if ``None``.
    layers : (lo, hi), optional
        Inclusive layer-index range; groups without an index are kept only when it is ``None``.
    kind : {"dense", "lora"}, optional
    """
    wanted = set(types) if types is not None else None
    out = []
    for g in catalog:
        if wanted is not None and g.module_type not in wanted:
            continue
        if layers is not None and (g.index is None or not layers[0] <= g.index <= layers[1]):
            continue
        if kind is not None and g.kind != kind:
            continue
        out.append(g)
    return out


def check_group(family: Family, group: LayerGroup) -> None:
    """Raise if some model of the family cannot be used for ``group`` (header facts only).

    Raises
    ------
    InputError
        Naming the first such model and the tensor, and how many more there are.
    """
    members = {m.name for m in family.models}
    # A group from the catalog of a larger family stays valid for a family narrowed by usable_family.
    problems = [p for p in group.problems if p[0] in members]
    if problems:
        m, why = problems[0]
        more = f" (and {len(problems) - 1} more models)" if len(problems) > 1 else ""
        raise InputError(f"model {m!r}: {why}{more}; leave these models out to analyse group {group.name!r}")


def usable_family(family: Family, group: LayerGroup) -> Family:
    """The family without the models that cannot be used for ``group`` (listed in ``skipped``)."""
    members = {m.name for m in family.models}
    bad = {m: why for m, why in group.problems if m in members}
    return family.without(bad) if bad else family


def catalog_table(catalog: Iterable[LayerGroup]) -> list[dict[str, object]]:
    """One JSON-ready row per group: name, kind, module type, layer, shape, dtype, rank(s), count."""
    return [
        {"name": g.name, "kind": g.kind, "module_type": g.module_type, "layer": g.index,
         "shape": list(g.shape), "dtype": g.dtype, "rank": g.rank, "ranks": list(g.ranks),
         "n_models": g.n_models, "in_base": g.in_base, "missing": list(g.missing)}
        for g in catalog
    ]


def describe_family(family: Family) -> dict[str, object]:
    """A JSON-ready summary of a family and its catalog (what ``inspect SOURCE --json`` prints)."""
    md = family.metadata
    return {
        "name": family.name,
        "source": family.source,
        "kind": family.kind,
        "n_models": len(family),
        "models": md.astype(object).where(md.notna(), None).to_dict("records"),
        "skipped": [s.to_json() for s in family.skipped],  # {name, path, reason}, as analyze --json
        "base": family.base.source if family.base is not None else None,
        "groups": catalog_table(build_catalog(family)),
    }
