"""Pass 1 of the out/in-mode metrics: what is gathered over the models before any basis is known.

One read of every model accumulates, per fold and per metadata group, the Gram and sum of the
side matrices (:class:`~explorer.metrics.heldout.PartitionGrams`) and the other side's Gram (the
small model stack is gathered by pass 2, when the fold Grams are gone).  The total Gram and sum are the decomposition's own, so the pipeline
decomposes them (:func:`explorer.engine.dense.decompose_gram`) instead of reading the models
once more to build the same Gram: :func:`side_sums` is that shared pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from explorer.core.errors import InputError
from explorer.core.lowrank import LowRank, as_lowrank
from explorer.core.progress import ProgressFn
from explorer.engine.gram import StackedGram
from explorer.metrics import heldout
from explorer.metrics.results import MetricsOptions

#: Most groups a metadata column may split a family into for group x group overlaps (one Gram
#: per group is held); the app and the report offer only columns within 2..MAX_GROUPS.
MAX_GROUPS = 32


_AUTO_GROUP_COLUMNS = ("group", "task_group", "init_group", "task")


def _pick_groups(labels: Sequence[Mapping[str, str]], group_by: str, notes: list[str]):
    """Group index per model (or None) for the metadata column chosen by ``group_by``."""
    if group_by == "none":
        return None, None, []
    col = group_by
    if group_by == "auto":
        # The first label column that splits the family into 2..MAX_GROUPS groups.
        cols = set().union(*[set(lab) for lab in labels]) if labels else set()
        col = next((c for c in _AUTO_GROUP_COLUMNS if c in cols
                    and 2 <= len({lab.get(c) for lab in labels}) <= MAX_GROUPS), None)
        if col is None:
            return None, None, []
    values = [lab.get(col) for lab in labels]
    if any(v is None for v in values):
        notes.append(f"group angles skipped: metadata column {col!r} is missing for some models")
        return None, None, []
    names = sorted(set(values))
    if not 2 <= len(names) <= MAX_GROUPS:
        notes.append(f"group angles skipped: column {col!r} has {len(names)} values (need 2..{MAX_GROUPS})")
        return None, None, []
    return col, np.array([names.index(v) for v in values]), names


def _read(it: Iterable[torch.Tensor], n: int, progress: ProgressFn | None, label: str):
    count = 0
    for i, w in enumerate(it):
        if i >= n:
            raise InputError(f"the layer group yielded more than the {n} models it announced")
        count += 1
        yield i, w
        if progress:
            progress(i + 1, n, label)
    if count != n:
        raise InputError(f"expected {n} models, read {count}")


@dataclass
class SideSums:
    """What pass 1 gathers over the models of an out- or in-mode group (nothing depends on a basis).

    Attributes
    ----------
    gram : Tensor, shape (d, d)
        Raw Gram G = sum X_i X_i^T of the side matrices (the decomposition's, before centering).
    side_sum : Tensor, shape (d, e)
        S = sum X_i.
    parts, gparts : PartitionGrams
        Per fold (and per metadata group, or None) Gram and sum.
    other : StackedGram or None
        The other side's Gram sum X_i^T X_i (None when it exceeds the budget).
    folds, groups : ndarray of int or None
    group_by, group_names, notes, keep_stack : the choices pass 1 made (``keep_stack``: whether
        pass 2 gathers the N x mn model stack).
    """

    mode: str
    d: int
    e: int
    gram: torch.Tensor
    side_sum: torch.Tensor
    parts: heldout.PartitionGrams
    gparts: heldout.PartitionGrams | None
    other: StackedGram | None
    folds: np.ndarray | None
    groups: np.ndarray | None
    group_by: str | None
    group_names: list
    notes: list
    keep_stack: bool


def side_matrices(open_stream, n, shape, mode, dtype, device, progress, label):
    """(index, side matrix X_i) for every model: W_i (out-mode) or W_i^T (in-mode), as LowRank."""
    for i, item in _read(open_stream(), n, progress, label):
        x = as_lowrank(item, i, shape, dtype, device, dense=True)
        yield i, (x if mode == "out" else x.T)


@dataclass(frozen=True)
class SumsPlan:
    """The choices pass 1 makes before reading anything (the same on every shard of the models).

    Attributes
    ----------
    mode : {"out", "in"}
    d, e : int
        Side matrix shape (Gram side, other side).
    n : int
        Models in the whole family (fold and group cells are indexed by the global model index).
    folds, groups : ndarray of int, shape (N,), or None
    group_by : str or None
    group_names : list of str
    notes : tuple of str
    keep_stack, two_sided : bool
        Whether the N x mn stack (by pass 2) and the other side's Gram are gathered.
    dtype, device : the accumulation's.
    """

    mode: str
    d: int
    e: int
    n: int
    folds: np.ndarray | None
    groups: np.ndarray | None
    group_by: str | None
    group_names: tuple
    notes: tuple
    keep_stack: bool
    two_sided: bool
    dtype: torch.dtype
    device: torch.device


def plan_sums(n, shape, so, mopts: MetricsOptions, labels, device, dtype) -> SumsPlan:
    """Decide the folds, groups, other-side Gram (and whether pass 2 stacks the models): nothing is read."""
    mode = so.mode
    m, ncol = shape
    d, e = (m, ncol) if mode == "out" else (ncol, m)
    notes: list[str] = []
    budget = mopts.max_memory_mb * 2**20
    per_cell = (d * d + d * e) * torch.tensor([], dtype=dtype).element_size()

    folds = None
    if mopts.folds >= 2 and n >= 2:
        folds = heldout.fold_assignment(n, mopts.folds, mopts.seed)
        if (folds.max() + 1) * per_cell > budget:
            notes.append(f"k-fold coverage skipped: {folds.max() + 1} fold Grams of {d}x{d} exceed max_memory_mb")
            folds = None
    elif mopts.folds >= 2:
        notes.append("held-out coverage skipped: it needs at least 2 models")
    group_by, groups, group_names = _pick_groups(labels, mopts.group_by, notes) if labels else (None, None, [])
    if groups is not None and len(group_names) * per_cell > budget:
        notes.append(f"group angles skipped: {len(group_names)} group Grams exceed max_memory_mb")
        group_by, groups, group_names = None, None, []
    # The N x mn stack (for the side-mode model kernel) only while small: an eighth of the budget
    # (256 MiB by default: 500 rank-16 A factors would be 262 MB, and memory is to stay flat in N).
    keep_stack = n * m * ncol * 8 <= budget // 8
    elt = torch.tensor([], dtype=dtype).element_size()
    two_sided = e * e * elt <= budget
    if not two_sided:
        notes.append(f"two-sided energies and coordinates skipped: the {e}x{e} other-side Gram exceeds max_memory_mb")
    return SumsPlan(mode, d, e, n, folds, groups, group_by, tuple(group_names), tuple(notes), keep_stack, two_sided,
                    dtype, device)


@dataclass
class PartialSums:
    """Pass 1 over some of the models (a shard): sums that add up across shards.

    :meth:`absorb` adds another shard's sums to these (the tree reduction of a cluster run); one
    shard of every model is the local run.  (The models' stack is gathered by pass 2,
    :class:`explorer.metrics.measure.Measured`, after the fold Grams are released.)
    """

    parts: heldout.PartitionGrams
    gparts: heldout.PartitionGrams | None
    other: StackedGram | None

    def absorb(self, other: PartialSums) -> PartialSums:
        """Add ``other``'s sums (over other models) to these; return self."""
        self.parts.absorb(other.parts)
        if self.gparts is not None:
            self.gparts.absorb(other.gparts)
        if self.other is not None:
            self.other.absorb(other.other)
        return self

    def compact(self) -> PartialSums:
        """Fold pending buffers into the sums and drop them (before the sums travel)."""
        self.parts.compact()
        if self.gparts is not None:
            self.gparts.compact()
        if self.other is not None:
            self.other.compact()
        return self


def accumulate(items: Iterable[tuple[int, LowRank]], plan: SumsPlan) -> PartialSums:
    """Pass 1 over ``(model index, side matrix)`` pairs: per-fold and per-group Gram sums and the
    other side's Gram."""
    n, d, e, dtype, device = plan.n, plan.d, plan.e, plan.dtype, plan.device
    out = PartialSums(heldout.PartitionGrams(plan.folds if plan.folds is not None else np.zeros(n, int), d, e, dtype,
                                             device),
                      heldout.PartitionGrams(plan.groups, d, e, dtype, device) if plan.groups is not None else None,
                      StackedGram(e, dtype, device) if plan.two_sided else None)
    for i, x in items:
        out.parts.add(i, x)
        if out.gparts is not None:
            out.gparts.add(i, x)
        if out.other is not None:
            out.other.add(x.cogram_factor())
    return out


def finish_sums(plan: SumsPlan, part: PartialSums) -> SideSums:
    """The :class:`SideSums` of a plan once every model's partial sums are in ``part``."""
    g, s, _ = part.parts.total()
    # The stacking buffers (64 MiB per fold at side 4096) are done with: fold them in and drop them.
    part.compact()
    return SideSums(plan.mode, plan.d, plan.e, g, s, part.parts, part.gparts, part.other, plan.folds,
                    plan.groups, plan.group_by, list(plan.group_names), list(plan.notes), plan.keep_stack)
