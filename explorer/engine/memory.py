"""Memory guard: estimate what an analysis holds in memory, and refuse it before it starts.

The engine streams models one at a time, so N only enters through the model-mode Gram
(N x N) and the metrics; what grows with the layer is the Gram (d x d, d = m or n), the thin
unfolding, the randomized sketch, one model's matrix, and the metrics' per-fold and per-group
Gram sums.  :func:`estimate` adds these up from the catalog (shapes only, no tensor read);
:func:`check` compares the total with the budget and raises :class:`MemoryBudgetError` with the
estimate, its largest parts and the cheapest mode that fits, so nothing is killed for running
out of memory half-way.

The budget is ``EXPLORER_MEMORY_BUDGET_MB`` (MiB), else half of the physical memory (or of the
cgroup limit, when a container sets a lower one), read on every call.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from explorer.core.errors import OptionError
from explorer.engine.options import SpectralOptions
from explorer.engine.plan import MODEL_BLOCK_BYTES, make_plan

ENV_BUDGET = "EXPLORER_MEMORY_BUDGET_MB"
# The estimate asks the engine's own solver plan (explorer.engine.plan) which path will run.
# eigh of a d x d Gram holds the Gram, a working copy and the eigenvectors.
_EIGH_COPIES = 3


class MemoryBudgetError(OptionError):
    """The analysis would need more memory than the budget allows (the message has the estimate)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes an analysis would hold at its peak, by part.

    Attributes
    ----------
    parts : dict of str to int
        ``{"Gram 4096 x 4096 float64": bytes, "one model": bytes, ...}``.
    """

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self, top: int = 3) -> str:
        """The largest parts, e.g. ``Gram 50000 x 50000 float64: 18.6 GiB; one model: 9.3 GiB``."""
        big = sorted(self.parts.items(), key=lambda kv: -kv[1])[:top]
        return "; ".join(f"{k}: {fmt_bytes(v)}" for k, v in big)


def fmt_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def physical_memory() -> int | None:
    """Bytes of physical memory, lowered to the cgroup (v2 or v1) limit when one is set."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(f).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and (total is None or int(raw) < total):
            total = int(raw)
    return total


def budget_bytes() -> int:
    """The memory budget: ``EXPLORER_MEMORY_BUDGET_MB`` MiB, else half the physical memory.

    Raises
    ------
    OptionError
        If the variable is set but is not a positive number.
    """
    raw = os.environ.get(ENV_BUDGET, "").strip()
    if raw:
        try:
            mb = float(raw)
        except ValueError:
            mb = -1.0
        if not mb > 0:
            raise OptionError(f"{ENV_BUDGET}={raw!r}: must be a positive number of MiB")
        return int(mb * (1 << 20))
    phys = physical_memory()
    return phys // 2 if phys else 8 << 30


# Metrics options are a stage above the engine: the estimate reads them by attribute, and an
# object without attributes stands for MetricsOptions() (every field at its default).
_DEFAULT_METRICS = object()


def _opt(obj: Any, name: str, default: Any) -> Any:
    return getattr(obj, name, default) if obj is not None else default


def estimate(
    shape: tuple[int, int],
    n_models: int,
    mode: str,
    *,
    options: Any = None,
    metrics: Any = "default",
    ranks: tuple[int, ...] | None = None,
) -> MemoryEstimate:
    """Estimate the peak bytes of one analysis.

    Parameters
    ----------
    shape : (m, n)
        Shape of each model's matrix in the view (ΔW's for LoRA ``dW``).
    n_models : int
    mode : {"out", "in", "model"}
    options : SpectralOptions, optional
        ``dtype``, ``method`` and ``k_store`` are used (default float64, auto, 256).
    metrics : MetricsOptions or None, optional
        None: the spectrum only.  Default: ``MetricsOptions()``.
    ranks : tuple of int, optional
        LoRA ranks r_i when the view is kept factored (``dW``): models are held as factors.

    Returns
    -------
    MemoryEstimate
    """
    m, n = int(shape[0]), int(shape[1])
    opts = options if options is not None else SpectralOptions(mode=mode)
    if opts.mode != mode:
        opts = replace(opts, mode=mode)
    # The CPU is passed so that no device is probed: only the dtype's size matters here.
    plan = make_plan((m, n), max(1, n_models), opts, ranks=ranks, device=torch.device("cpu"))
    item = plan.item
    dt = opts.dtype
    parts: dict[str, int] = {}
    if ranks:
        r_max = max(ranks)
        parts["one model (factors)"] = r_max * (m + n) * (4 + item)
    else:
        parts["one model"] = m * n * (4 + item)  # the stored matrix read as float32, and its compute copy
    if plan.solver == "model":
        parts[f"model Gram {n_models} x {n_models}"] = _EIGH_COPIES * n_models * n_models * item
        if ranks:
            parts["all factors (factored model mode)"] = sum(ranks) * (m + n) * item
        else:
            parts["row block"] = min(n_models * m * n * item, MODEL_BLOCK_BYTES)
        side = min(m, n)
    else:
        d = plan.d
        if plan.solver == "randomized":
            cols = opts.k_store + opts.oversample
            parts[f"randomized sketch {d} x {cols}"] = 4 * d * cols * item
        elif plan.solver == "thin":
            parts[f"unfolding {d} x {plan.width} (thin SVD)"] = 2 * d * plan.width * item
        else:
            parts[f"Gram {d} x {d} {dt}"] = _EIGH_COPIES * d * d * item
        side = d
    if metrics == "default":
        metrics = _DEFAULT_METRICS
    if metrics is not None:
        folds = min(int(_opt(metrics, "folds", 5)), n_models)
        groups = 0 if _opt(metrics, "group_by", "auto") == "none" else 2
        cap = int(_opt(metrics, "max_memory_mb", 2048)) << 20
        # Fold/group sums are skipped by the metrics pass beyond max_memory_mb: capped there.
        parts[f"metrics fold/group sums ({folds} folds)"] = min((folds + groups) * side * side * 8, cap)
        parts["metrics side Gram and leave-one-out eigh"] = 2 * side * side * 8
    return MemoryEstimate(parts)


def check(
    shape: tuple[int, int],
    n_models: int,
    mode: str,
    what: str,
    *,
    options: Any = None,
    metrics: Any = "default",
    ranks: tuple[int, ...] | None = None,
    budget: int | None = None,
) -> MemoryEstimate:
    """Raise :class:`MemoryBudgetError` if the analysis would exceed the budget; else return the estimate.

    The message names ``what`` (e.g. ``view 'full' of 'layers.0'``), the shape, the estimate
    with its largest parts, the budget, and the cheapest mode when another one fits.
    """
    budget = budget_bytes() if budget is None else budget
    est = estimate(shape, n_models, mode, options=options, metrics=metrics, ranks=ranks)
    if est.total <= budget:
        return est
    others = {md: estimate(shape, n_models, md, options=options, metrics=metrics, ranks=ranks).total
              for md in ("out", "in", "model") if md != mode}
    best = min(others, key=others.get)
    hint = (f"{best}-mode would need about {fmt_bytes(others[best])}; " if others[best] <= budget else "")
    if metrics is not None and estimate(shape, n_models, mode, options=options, metrics=None, ranks=ranks).total <= budget:
        hint += "the spectrum alone (no metrics) would fit; "
    raise MemoryBudgetError(
        f"{what} ({shape[0]} x {shape[1]}, {mode}-mode, {n_models} models) needs about {fmt_bytes(est.total)} "
        f"({est.describe()}), over the memory budget of {fmt_bytes(budget)}; {hint}"
        f"raise {ENV_BUDGET} to allow more"
    )
