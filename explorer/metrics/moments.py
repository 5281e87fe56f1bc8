"""Each model's own Gram and matrix, kept side by side (:class:`ModelMoments`): the sums that any
subset of the models needs for a fit of its own — a subsample (:mod:`subsample`), a relabelled
group (:mod:`permutation`) — built once per analysis and shared by both; and the models' inner
products (:func:`stack_kernel`), the side modes' model kernel, from the models' stack
(:func:`stack_entry`: each model flattened, as compactly as holds it exactly)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True, eq=False)
class ModelMoments:
    """Per model i: X_i X_i^T and X_i, flattened, float64.

    Attributes
    ----------
    grams : Tensor, shape (N, d * d)
    sums : Tensor, shape (N, d * e)
    d, e : int
        The side matrices' shape.
    """

    grams: torch.Tensor
    sums: torch.Tensor
    d: int
    e: int

    @classmethod
    def of(cls, sides: Sequence[torch.Tensor]) -> ModelMoments:
        """From the models' side matrices X_i (each d x e)."""
        x = [t.double() for t in sides]
        d, e = x[0].shape
        return cls(torch.stack([xi @ xi.T for xi in x]).reshape(len(x), -1), torch.stack(x).reshape(len(x), -1),
                   int(d), int(e))

    def __len__(self) -> int:
        return int(self.grams.shape[0])

    def rows(self, index) -> ModelMoments:
        """The moments of the models ``index`` (an index array), in that order."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ModelMoments(self.grams[idx], self.sums[idx], self.d, self.e)


# Columns of the models' stack gathered per product in :func:`stack_kernel`: an N x w slab of
# about 32 MiB, so the kernel never copies the whole N x mn stack (262 MB at 500 rank-16 factors).
KERNEL_SLAB_BYTES = 32 << 20


def stack_kernel(stack: Sequence[torch.Tensor], z: torch.Tensor | None = None) -> torch.Tensor:
    """K_ij = <X_i - Z, X_j - Z> of flattened models, summed over column slabs.

    Parameters
    ----------
    stack : sequence of Tensor, each shape (mn,)
        The models, flattened.
    z : Tensor, optional
        The centre (any shape with mn entries); None for no centring.

    Returns
    -------
    Tensor, shape (N, N)
        float64.
    """
    n = len(stack)
    mn = int(stack[0].numel())
    kernel = torch.zeros(n, n, dtype=torch.float64)
    zf = None if z is None else z.reshape(-1).cpu().double()
    w = max(1, KERNEL_SLAB_BYTES // (8 * n))
    for c0 in range(0, mn, w):
        slab = torch.stack([t[c0:c0 + w] for t in stack]).double()
        if zf is not None:
            slab -= zf[c0:c0 + w]
        kernel.addmm_(slab, slab.T)
    return kernel


def as_moments(x: ModelMoments | Sequence[torch.Tensor]) -> ModelMoments:
    """``x`` itself, or the moments of the side matrices ``x``."""
    return x if isinstance(x, ModelMoments) else ModelMoments.of(x)


def stack_entry(x: torch.Tensor) -> torch.Tensor:
    """One model of the stack: ``x`` flattened, in float32 when that holds it exactly, else float64.

    Weights stored in bf16, fp16 or fp32 (every real checkpoint) are exact in float32, so the
    stack takes half the bytes (125 MB instead of 250 at 500 rank-16 factors of side 4096) and
    its users, who compute in float64 from it, get the same numbers.

    Parameters
    ----------
    x : Tensor, any shape with mn entries

    Returns
    -------
    Tensor, shape (mn,)
        On the CPU; ``x``'s own storage when it is a contiguous float32 CPU tensor.
    """
    t = x.reshape(-1).cpu()
    if t.dtype == torch.float32:
        return t
    t = t.double()
    t32 = t.float()
    return t32 if torch.equal(t32.double(), t) else t
