"""Each model's own Gram and matrix, kept side by side (:class:`ModelMoments`): the sums that any
subset of the models needs for a fit of its own — a subsample (:mod:`subsample`), a relabelled
group (:mod:`permutation`) — built once per analysis and shared by both."""
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


def as_moments(x: ModelMoments | Sequence[torch.Tensor]) -> ModelMoments:
    """``x`` itself, or the moments of the side matrices ``x``."""
    return x if isinstance(x, ModelMoments) else ModelMoments.of(x)
