"""Views: which matrices of a layer group the engine decomposes.

- ``full``: each model's weight as stored (dense groups).
- ``delta``: W_i - W_base, with the family's base model (dense groups).
- ``A``: the LoRA A factors (r x n); the engine stacks their rows (its in-mode, the default
  mode of this view: :func:`default_mode`).
- ``B``: the LoRA B factors (m x r); the engine stacks their columns (its out-mode, the default).
- ``dW``: ΔW_i = s_i B_i A_i (m x n), kept factored (:class:`FactorStream`, yielding
  :class:`~explorer.core.lowrank.LowRank` items): never N dense m x n.

A view turns (family, group) into a stream: a shape and a re-iterable source of matrices, one
model at a time (each ``open()`` starts a fresh pass; the engine may need two).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from explorer.catalog.groups import LayerGroup, check_group
from explorer.core.errors import InputError, OptionError
from explorer.core.lowrank import LowRank, as_lowrank
from explorer.core.timing import timed_iter
from explorer.sources.family import Family

VIEWS: tuple[str, ...] = ("full", "delta", "A", "B", "dW")


@dataclass(frozen=True)
class DenseStream:
    """N matrices of one shape, produced lazily.

    Attributes
    ----------
    shape : (m, n)
    n_models : int
    open : callable() -> iterator of Tensor (m, n)
        Each call starts a fresh pass over the models (the engine may need two passes).
    valid_modes : tuple of str or None
        When set, the only modes (with centering ``none``) whose result is exact: LoRA factors of
        mixed ranks are zero-padded to the largest rank, which leaves the in-mode Gram of A
        (sum A_i^T A_i) and the out-mode Gram of B (sum B_i B_i^T) unchanged, and nothing else.
    widths : tuple of int or None
        With that padding, each model's true rank (its columns in the valid mode): the null
        gives each model its own degrees of freedom.
    """

    shape: tuple[int, int]
    n_models: int
    open: Callable[[], Iterator[torch.Tensor]]
    valid_modes: tuple[str, ...] | None = None
    widths: tuple[int, ...] | None = None

    ranks = None  # dense members: no LoRA ranks (FactorStream has them)

    def check(self, mode: str, center: str, what: str) -> None:
        """Refuse a mode/centering this stream cannot answer exactly (mixed-rank zero padding).

        The memory guard is the pipeline's (:mod:`explorer.engine.memory`): views only know shapes.
        """
        if self.valid_modes is not None and (mode not in self.valid_modes or center != "none"):
            raise OptionError(f"{what}: LoRA ranks differ across models, so only mode "
                              f"{' or '.join(self.valid_modes)} with centering 'none' is defined; "
                              "use view 'dW' for the other modes and centerings")


@dataclass(frozen=True)
class FactorStream:
    """N low-rank matrices W_i = s_i B_i A_i of one shape, produced lazily as factors.

    Attributes
    ----------
    shape : (m, n)
        Shape of each W_i.
    n_models : int
    ranks : tuple of int
        r_i per model (they may differ).
    open : callable() -> iterator of LowRank
        W_i with ``left`` = B_i (m, r_i), ``right`` = A_i (r_i, n) as stored, ``scale`` = s_i,
        checked once as it is read (:meth:`LowRank.from_lora`); a fresh pass per call.
    """

    shape: tuple[int, int]
    n_models: int
    ranks: tuple[int, ...]
    open: Callable[[], Iterator[LowRank]]

    def check(self, mode: str, center: str, what: str) -> None:
        """Every mode and centering is exact on factors: nothing to refuse (same interface as DenseStream)."""

    def dense(self) -> DenseStream:
        """The same matrices materialised one at a time, s_i B_i A_i (m x n), for dense engines."""
        def gen() -> Iterator[torch.Tensor]:
            # Plain (B, A, s) triples are accepted too (a FactorStream built by hand).
            for i, item in enumerate(self.open()):
                yield as_lowrank(item, i, self.shape).dense()

        return DenseStream(self.shape, self.n_models, gen)


def views_for(family: Family, group: LayerGroup) -> tuple[str, ...]:
    """The views that apply to ``group`` of ``family`` (the first is the default)."""
    if group.kind == "lora":
        return ("dW", "A", "B")
    return ("full", "delta") if group.in_base else ("full",)


def default_view(family: Family, group: LayerGroup) -> str:
    """``dW`` for LoRA groups, ``full`` for dense ones."""
    return views_for(family, group)[0]


#: The mode each view is read in when the caller does not choose one: the space in which the view's
#: matrices have many dimensions.  A_i is r x n, so its out-mode is the r x r space of the factors
#: (r components, meaningless across adapters) and its in-mode the input space R^n that the paper
#: and every LoRA tool decompose; B_i is m x r, the other way round; full, delta and dW are read
#: in the output space, the engine's convention.
DEFAULT_MODES: dict[str, str] = {"full": "out", "delta": "out", "A": "in", "B": "out", "dW": "out"}


def default_mode(view: str) -> str:
    """The mode ``view`` is analysed in unless the caller picks one: ``in`` for A, else ``out``.

    Parameters
    ----------
    view : {"full", "delta", "A", "B", "dW"}

    Raises
    ------
    OptionError
        If ``view`` is not a view.
    """
    if view not in DEFAULT_MODES:
        raise OptionError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    return DEFAULT_MODES[view]


def _full(family: Family, group: LayerGroup) -> DenseStream:
    return DenseStream(group.shape, len(family), lambda: (t for _, t in family.iter_tensors(group.tensor)))


def _delta(family: Family, group: LayerGroup) -> DenseStream:
    base = family.base
    assert base is not None

    def gen() -> Iterator[torch.Tensor]:
        w0 = family.tensor(base, group.tensor)  # read once per pass, not once per model
        for _, t in family.iter_tensors(group.tensor):
            yield t - w0

    return DenseStream(group.shape, len(family), gen)


def _factors(family: Family, group: LayerGroup) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, float]]:
    assert group.b_tensor is not None
    for m in family.models:
        a = family.tensor(m, group.tensor)
        b = family.tensor(m, group.b_tensor)
        yield m.name, b, a, family.lora_scale(m, group.name)


def _factor_stream(family: Family, group: LayerGroup) -> FactorStream:
    for m in family.models:
        if m.adapter is not None and m.adapter.use_dora:
            raise OptionError(f"model {m.name!r}: is a DoRA adapter, whose update is not s·B·A; view 'dW' does not apply")
    ranks = tuple(family.headers[m.name][group.tensor].shape[0] for m in family.models)

    def gen() -> Iterator[LowRank]:
        for i, (_, b, a, s) in enumerate(_factors(family, group)):
            yield LowRank.from_lora(b, a, s, index=i, shape=group.shape)

    return FactorStream(group.shape, len(family), ranks, gen)


def _factor_view(family: Family, group: LayerGroup, view: str) -> DenseStream:
    """A (r x n) or B (m x r) of every adapter.

    Mixed ranks are zero-padded to the largest rank (rows of A, columns of B): the stacked rows
    of A and columns of B — what the paper decomposes — are unchanged by zero rows/columns, so the
    A in-mode and B out-mode spectra stay exact; other modes are refused by :meth:`DenseStream.check`.
    """
    m, n = group.shape
    r = group.rank if group.rank is not None else max(group.ranks)
    valid = None if group.rank is not None else (("in",) if view == "A" else ("out",))
    name = group.tensor if view == "A" else group.b_tensor
    assert name is not None

    def gen() -> Iterator[torch.Tensor]:
        for mm in family.models:
            t = family.tensor(mm, name)
            if view == "A" and t.shape[0] < r:
                t = torch.cat([t, t.new_zeros(r - t.shape[0], t.shape[1])], dim=0)
            elif view == "B" and t.shape[1] < r:
                t = torch.cat([t, t.new_zeros(t.shape[0], r - t.shape[1])], dim=1)
            yield t

    widths = None if valid is None else tuple(int(family.headers[mm.name][group.tensor].shape[0]) for mm in family.models)
    return DenseStream((r, n) if view == "A" else (m, r), len(family), gen, valid, widths)


def stream_for_view(family: Family, group: LayerGroup, view: str) -> DenseStream | FactorStream:
    """Return the stream of matrices that ``view`` of ``group`` decomposes.

    Returns
    -------
    DenseStream
        For ``full``, ``delta``, ``A`` (shape (r, n)) and ``B`` (shape (m, r)).
    FactorStream
        For ``dW``; call ``.dense()`` for an engine that only takes dense matrices.

    Raises
    ------
    OptionError
        If the view does not apply to the group (with the views that do).
    InputError
        If a model lacks the group or holds it with another shape (naming it).
    """
    if view not in VIEWS:
        raise OptionError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    allowed = views_for(family, group)
    if view not in allowed:
        if view == "delta" and group.kind == "dense":
            raise OptionError(f"view 'delta' of {group.name!r} needs a base model holding it; {family.source} has "
                              f"{'none' if family.base is None else 'a base without it'}; use view 'full'")
        what = "a LoRA group" if group.kind == "lora" else "a dense group"
        raise OptionError(f"view {view!r} does not apply to {group.name!r}, {what}; use {' or '.join(allowed)}")
    check_group(family, group)
    if view == "full":
        return _full(family, group)
    if view == "delta":
        return _delta(family, group)
    if view == "dW":
        return _factor_stream(family, group)
    return _factor_view(family, group, view)


def merged_delta(family: Family, group: LayerGroup, model_name: str) -> torch.Tensor:
    """ΔW = s B A (m x n) of one model, dense: for checks and small displays only."""
    m = next((mm for mm in family.models if mm.name == model_name), None)
    if m is None:
        raise InputError(f"{family.source}: has no model {model_name!r}")
    if group.kind != "lora" or group.b_tensor is None:
        raise OptionError(f"{group.name!r} is not a LoRA group")
    return family.lora_scale(m, group.name) * (family.tensor(m, group.b_tensor) @ family.tensor(m, group.tensor))


def _nbytes(item) -> int:
    """Bytes an item of a stream holds: a Tensor, or a LowRank's factors."""
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    if isinstance(item, LowRank):
        return sum(t.numel() * t.element_size() for t in (item.left, item.right) if t is not None)
    return sum(t.numel() * t.element_size() for t in item if isinstance(t, torch.Tensor))


def held(stream: DenseStream | FactorStream, max_bytes: int) -> DenseStream | FactorStream:
    """The same stream, read from disk once: its first complete pass is kept and replayed.

    An analysis passes over the models three times (decomposition, then the two metrics
    passes); reading and decoding every file each time costs as much as the Gram at 500
    adapters.  The items as read (LoRA factors of 500 rank-16 adapters of 4096 x 4096: 131 MB
    per side in float32) are kept while their total stays within ``max_bytes``; beyond it the
    keeping stops and each pass reads the files again (memory stays O(one model)).

    Parameters
    ----------
    stream : DenseStream or FactorStream
    max_bytes : int
        Most bytes kept (0 keeps nothing).

    Returns
    -------
    DenseStream or FactorStream
        Of the same type, shape and ranks; ``open()`` replays the kept items once a pass has
        completed within the budget.
    """
    kept: list = []
    state = {"complete": False, "over": max_bytes <= 0}

    def open_() -> Iterator:
        if state["complete"]:
            yield from kept
            return
        kept.clear()
        total = 0
        for item in stream.open():
            if not state["over"]:
                total += _nbytes(item)
                if total > max_bytes:
                    state["over"] = True
                    kept.clear()
                else:
                    kept.append(item)
            yield item
        # Only a pass that ran to its end (no exception, not abandoned) is replayed.
        state["complete"] = not state["over"]

    return replace(stream, open=open_)


def timed(stream: DenseStream | FactorStream) -> DenseStream | FactorStream:
    """The same stream, its reads charged to the ``read`` stage (:mod:`explorer.core.timing`)."""
    return replace(stream, open=lambda: timed_iter(stream.open(), "read"))
