"""One model's side matrix X (d x e), dense or as a LoRA product, with the few operations metrics need.

The metrics code sees every model as X_i = W_i (out-mode) or W_i^T (in-mode).  For a LoRA update
W = s B A the product is never formed when it need not be: X = L R with L (d x r), R (r x e), so
projections cost O(k r (d + e)) instead of O(k d e), and the Gram contributions are thin factors
F with F F^T = X X^T (d x r), which the accumulators stack before one large product.
"""
from __future__ import annotations

import numpy as np
import torch

from explorer.core.errors import InputError
from explorer.core.linalg import psd_sqrt, sign_fix

# Above this smaller side, a model's own top-k subspace comes from a randomized SVD (torch's
# svd_lowrank with q = max(2k + 16, 64) columns and 16 power iterations); below it, from an exact
# SVD.  Measured on a 1500 x 1600 matrix with a *linearly* decaying spectrum (3 -> 0.1, far
# flatter than trained weights): smallest principal cosine to the exact top-8 subspace 0.9998,
# at a quarter of the exact SVD's time.
_EXACT_SVD_SIDE = 1024


class SideMatrix:
    """X = ``dense`` (d x e), or X = ``left`` @ ``right`` with left (d x r), right (r x e)."""

    def __init__(self, dense: torch.Tensor | None = None, left: torch.Tensor | None = None,
                 right: torch.Tensor | None = None):
        self.x, self.left, self.right = dense, left, right

    @classmethod
    def from_item(cls, item, i: int, mode: str, shape: tuple[int, int], device, dtype) -> "SideMatrix":
        """Wrap one stream item: a Tensor (m, n), or a LoRA triple (B (m, r), A (r, n), scale)."""
        m, n = shape
        if isinstance(item, torch.Tensor):
            if tuple(item.shape) != (m, n):
                raise InputError(f"model {i}: matrix of shape {tuple(item.shape)} does not match the group's {shape}")
            w = item.to(device=device, dtype=dtype)
            return cls(dense=w if mode == "out" else w.T)
        try:
            b, a, s = item
        except (TypeError, ValueError):
            raise InputError(f"model {i}: expected a matrix or a (B, A, scale) triple") from None
        if b.dim() != 2 or a.dim() != 2 or b.shape[0] != m or a.shape[1] != n or b.shape[1] != a.shape[0]:
            raise InputError(f"adapter {i}: B {tuple(b.shape)} and A {tuple(a.shape)} do not factor an {m}x{n} update")
        b = b.to(device=device, dtype=dtype) * float(s)
        a = a.to(device=device, dtype=dtype)
        return cls(left=b, right=a) if mode == "out" else cls(left=a.T, right=b.T)

    @property
    def factored(self) -> bool:
        return self.x is None

    def dense(self) -> torch.Tensor:
        """X itself, shape (d, e)."""
        return self.x if self.x is not None else self.left @ self.right

    def gram_factor(self) -> torch.Tensor:
        """F (d x w) with F F^T = X X^T: X itself, or L sqrt(R R^T) (d x r)."""
        if self.x is not None:
            return self.x
        return self.left @ psd_sqrt(self.right @ self.right.T)

    def other_factor(self) -> torch.Tensor:
        """F (e x w) with F F^T = X^T X."""
        if self.x is not None:
            return self.x.T
        return self.right.T @ psd_sqrt(self.left.T @ self.left)

    def add_to(self, s: torch.Tensor, alpha: float = 1.0) -> None:
        """s += alpha X, in place."""
        if self.x is not None:
            s.add_(self.x, alpha=alpha)
        else:
            s.addmm_(self.left, self.right, alpha=alpha)

    def left_product(self, u: torch.Tensor) -> torch.Tensor:
        """U^T X, shape (k, e)."""
        return u.T @ self.x if self.x is not None else (u.T @ self.left) @ self.right

    def sq_norm(self) -> float:
        """||X||_F^2."""
        if self.x is not None:
            return float((self.x * self.x).sum())
        return float(((self.left.T @ self.left) * (self.right @ self.right.T)).sum())

    def inner(self, z: torch.Tensor) -> float:
        """<X, Z>_F for a dense Z (d x e)."""
        if self.x is not None:
            return float((self.x * z).sum())
        return float(((self.left.T @ z) * self.right).sum())

    def centered(self, z: torch.Tensor | None) -> "SideMatrix":
        """X - Z (dense when Z is given, since Z is generally full rank)."""
        if z is None:
            return self
        return SideMatrix(dense=self.dense() - z)

    def left_basis(self, k: int) -> np.ndarray:
        """Top-``k`` left singular vectors of X, sign-fixed, shape (d, min(k, rank bound))."""
        if self.x is None:
            # X = L R = Q (T R) with L = Q T: only an r x e SVD is needed.
            q, t = torch.linalg.qr(self.left)
            uu = torch.linalg.svd(t @ self.right, full_matrices=False)[0]
            kk = max(1, min(k, uu.shape[1]))
            return _numpy_fixed(q @ uu[:, :kk])
        d, e = self.x.shape
        kk = max(1, min(k, d, e))
        if min(d, e) <= _EXACT_SVD_SIDE:
            return _numpy_fixed(torch.linalg.svd(self.x, full_matrices=False)[0][:, :kk])
        gen = torch.Generator(device=self.x.device).manual_seed(0)
        # svd_lowrank draws its test matrix from the global generator: fork it to stay deterministic.
        with torch.random.fork_rng(devices=[self.x.device.index or 0] if self.x.is_cuda else []):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            u = torch.svd_lowrank(self.x, q=min(max(2 * kk + 16, 64), min(d, e)), niter=16)[0]
        return _numpy_fixed(u[:, :kk])


def _numpy_fixed(u: torch.Tensor) -> np.ndarray:
    """Sign-fixed float64 numpy copy of a basis (d x k)."""
    return sign_fix(u.cpu().double().numpy())
