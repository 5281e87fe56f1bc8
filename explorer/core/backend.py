"""Device and dtype policy: cuda -> mps -> cpu (overridable), fp16/bf16 upcast; results come back as numpy."""
from __future__ import annotations

import torch

from explorer.core.errors import OptionError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def pick_device(name: str = "auto") -> torch.device:
    """Return the torch device to compute on.

    Parameters
    ----------
    name : {"auto", "cpu", "cuda", "mps"}
        ``"auto"`` picks the first available of cuda, mps, cpu.

    Raises
    ------
    OptionError
        If ``name`` is unknown or the requested device is not available here.
    """
    if name not in DEVICES:
        raise OptionError(f"--device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for, but no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptionError("--device mps was asked for, but MPS is not available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """Return the accumulation dtype.

    MPS has no float64, so float64 on MPS is refused rather than silently downgraded.
    """
    if name not in DTYPES:
        raise OptionError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    if device.type == "mps" and name == "float64":
        raise OptionError("--dtype float64 is not supported on MPS; use --dtype float32")
    return DTYPES[name]


def as_compute(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Move a stored tensor to the accumulation dtype and device.

    fp16/bf16 (and integer) inputs are upcast: they are storage formats, and summing squares
    of many of them in half precision would lose most of the spectrum's tail.

    Parameters
    ----------
    t : Tensor, any shape
    dtype : torch.float64 or torch.float32
    device : torch.device
    """
    if t.dtype == dtype and t.device == device:
        return t
    return t.to(device=device, dtype=dtype)
