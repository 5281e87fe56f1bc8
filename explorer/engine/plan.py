"""The solver plan: device, dtype, Gram side and solver, chosen once per decomposition.

Every engine entry point (:func:`explorer.engine.dense.decompose`,
:func:`explorer.engine.factored.decompose_factored`) and the memory guard
(:mod:`explorer.engine.memory`) ask :func:`make_plan` the same question, so the path the estimate
describes is the path that runs.  Solvers are named, as in tensorly's ``svd_interface``:

========== =====================================================================================
``gram``   accumulate the d x d Gram of the smaller side (stacked thin blocks), then eigh
``thin``   the unfolding (d x N*width) is thinner than its Gram: hold it, decompose its small side
``randomized``  subspace iteration on the Gram applied as an operator (d beyond ~16k)
``model``  the N x N model kernel K_ij = <W_i, W_j>_F (by row blocks when the stack is large)
========== =====================================================================================

The dispatch tables from these names to functions live with the solvers (``dense.SOLVERS``,
``factored.SOLVERS``); this module only decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from explorer.core.backend import pick_device, pick_dtype
from explorer.core.errors import InputError
from explorer.engine.options import SpectralOptions

SOLVER_NAMES: tuple[str, ...] = ("gram", "thin", "randomized", "model")
# Above this Gram side the exact path would hold a > 2 GiB float64 Gram and spend minutes in
# eigh; "auto" switches to the randomized path there.
RANDOMIZED_THRESHOLD = 16384
# The thin unfolding is preferred over the randomized path while it stays below this size.
THIN_LIMIT_BYTES = 2 << 30
# One row-block buffer of the model-mode Gram (dense views): 256 MiB keeps each product large
# enough to be compute-bound while bounding memory on a 24 GiB machine.
MODEL_BLOCK_BYTES = 256 << 20


@dataclass(frozen=True)
class SolverPlan:
    """How one decomposition runs.

    Attributes
    ----------
    solver : {"gram", "thin", "randomized", "model"}
    factored : bool
        The members are LoRA products s_i B_i A_i kept as factors.
    shape : (m, n)
        Shape of each member's matrix.
    n_models : int
    mode, center : str
    d : int
        Side of the Gram that is decomposed: m (out), n (in) or N (model).
    width : int
        Total columns of the unfolding: N * n (out), N * m (in), or sum_i r_i for factors.
    device : torch.device
    dtype : torch.dtype
    """

    solver: str
    factored: bool
    shape: tuple[int, int]
    n_models: int
    mode: str
    center: str
    d: int
    width: int
    device: torch.device
    dtype: torch.dtype

    @property
    def item(self) -> int:
        """Bytes per element of the accumulation dtype."""
        return torch.empty((), dtype=self.dtype).element_size()


def make_plan(
    shape: Sequence[int],
    n_models: int,
    options: SpectralOptions,
    *,
    ranks: Sequence[int] | None = None,
    factored: bool = False,
    what: str = "models",
    device: torch.device | None = None,
) -> SolverPlan:
    """Choose device, dtype and solver for one decomposition (nothing is read).

    Parameters
    ----------
    shape : (m, n)
    n_models : int
        N >= 1.
    options : SpectralOptions
    ranks : sequence of int, optional
        LoRA ranks r_i when the members are kept factored; their sum is the unfolding's width.
    factored : bool
        The members are factors; implied by ``ranks``.  Without ranks the width is not known
        before reading, so the thin choice is left to the factored solver at run time.
    what : str
        Names the members in the error (``models``, ``adapters``).
    device : torch.device, optional
        Skip device detection (the memory guard passes the CPU; only the dtype size matters there).

    Raises
    ------
    InputError
        If there is no member.
    OptionError
        If the device or dtype is unknown or unavailable.
    """
    m, n = (int(x) for x in shape)
    if n_models < 1:
        raise InputError(f"the layer group has no {what} to decompose")
    device = pick_device(options.device) if device is None else device
    dtype = pick_dtype(options.dtype, device)
    mode = options.resolved().mode  # a mode left unchosen means out (the engine sees no view)
    factored = factored or ranks is not None
    if mode == "model":
        return SolverPlan("model", factored, (m, n), n_models, mode, options.center, n_models,
                          n_models * m * n, device, dtype)
    d, each = (m, n) if mode == "out" else (n, m)
    if factored:
        width = int(sum(min(int(r), each) for r in ranks)) if ranks is not None else 0
    else:
        width = n_models * each
    item = torch.empty((), dtype=dtype).element_size()
    thin_possible = width < d and not (factored and ranks is None)
    # A thin unfolding is exact and smaller than the Gram: prefer it, even above the randomized
    # threshold, while it fits in THIN_LIMIT_BYTES (or always with method="exact").
    thin = thin_possible and (options.method == "exact" or d * width * item <= THIN_LIMIT_BYTES)
    if options.method == "randomized" or (options.method == "auto" and d > RANDOMIZED_THRESHOLD and not thin):
        solver = "randomized"
    elif thin_possible:
        solver = "thin"
    else:
        solver = "gram"
    return SolverPlan(solver, factored, (m, n), n_models, mode, options.center, d, width, device, dtype)
