"""The per-tensor work of every read: upcast to float32 and the NaN/Inf check.

The check runs in numpy on the calling thread, not in torch's intra-op pool: in the app's script
threads, beside the browser on 2 cores, torch's ``isfinite(t).all()`` on a 16 x 4096 factor was
measured at 5 ms (0.15 ms in a quiet CLI, numpy 0.02 ms), most of the 5 s the Spectrum page's
A-factor clustering of 500 adapters took (0.6 s in the CLI).
"""
from __future__ import annotations

import numpy as np
import torch

from explorer.core.errors import MemberError


def upcast(t: torch.Tensor) -> torch.Tensor:
    """A float16/bfloat16 tensor as float32 (exact), others unchanged; shape kept.

    torch's own conversion: the same bits written by numpy (bfloat16 shifted left by 16) were
    1.6x faster per tensor, but raised the peak of a 500-adapter analysis by 200 MiB (measured
    with torch- and numpy-owned outputs alike), so only the check below runs in numpy.
    """
    return t.to(torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t


def check_finite(t: torch.Tensor, model: str, tensor: str, path: str | None) -> None:
    """Raise :class:`~explorer.core.errors.MemberError` if ``t`` holds NaN or Inf.

    Shared by every reader of tensor data (``Family.tensor`` for whole tensors, the model-mode row
    reader for row blocks), so a non-finite member is reported, and skipped, the same way
    whichever path reads it.
    """
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        finite = bool(np.isfinite(t.detach().numpy()).all())
    else:
        finite = bool(torch.isfinite(t).all())
    if not finite:
        raise MemberError(f"model {model!r}: tensor {tensor!r} in {path} holds NaN or Inf", model, str(path or ""))
