"""PyTorch state-dict files (``.pt``, ``.pth``, ``.bin``), loaded only with ``weights_only=True``.

A pickle has no separate header, so listing its tensors means loading it.  We load with
``mmap=True`` (zip-format files, the default since torch 1.6), which reads the small pickle and
maps the storages without reading tensor bytes; legacy files fall back to a full load.  Headers
are cached per (path, mtime, size); loaded state dicts are kept for the last few files only, so
a pass over a family holds one model at a time.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from functools import lru_cache

import torch

from explorer.core.errors import InputError

# Keys under which training scripts commonly nest the state dict, in order of preference.
NEST_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network",
             "weights", "params", "ema_state_dict", "ema")
# Wrapper prefixes added by DataParallel / torch.compile, dropped when every key has them.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_TRAINING_STATE = ("optimizer", "optimizer_state_dict", "scheduler", "lr_scheduler", "scaler")

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def dtype_name(dtype: torch.dtype) -> str:
    """Safetensors-style dtype string of a torch dtype (``torch.float16`` -> ``"F16"``)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", "").upper())


def _refusal(exc: Exception) -> str:
    # torch's weights_only message is many lines; keep the line that names the refused object.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "global" in ln.lower():
            return ln
    return lines[0] if lines else exc.__class__.__name__


def _torch_load(path: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused by torch.load(weights_only=True): {_refusal(exc)}") from None
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc).lower():
            raise InputError(f"{path}: corrupt or truncated torch file ({_refusal(exc)})") from None
    except (OSError, EOFError, ValueError):  # a cut file can fail inside mmap itself: try a plain load
        pass
    # Legacy (pre-zip) files cannot be memory-mapped; zip errors get a second, plain attempt too.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused by torch.load(weights_only=True): {_refusal(exc)}") from None
    except Exception as exc:  # EOFError, RuntimeError, zipfile errors...: all mean a bad file
        raise InputError(f"{path}: corrupt or truncated torch file ({_refusal(exc)})") from None


def _flatten(obj: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
        elif isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
    return out


def extract_state_dict(obj: object, path: str) -> dict[str, torch.Tensor]:
    """Find the ``{name: tensor}`` state dict in a loaded checkpoint.

    A mapping whose values are mostly tensors is the state dict itself; otherwise the first of
    :data:`NEST_KEYS` that holds a mapping with tensors is used (``{"epoch": 3,
    "model_state_dict": {...}}``).

    Raises
    ------
    InputError
        If no state dict is found.
    """
    if isinstance(obj, Mapping):
        n_tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        if n_tensors and 2 * n_tensors >= len(obj):
            sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        else:
            sd = {}
            for key in NEST_KEYS:
                if isinstance(obj.get(key), Mapping):
                    try:
                        sd = extract_state_dict(obj[key], path)
                        break
                    except InputError:
                        continue
            if not sd:
                # Last resort: nested module dicts, leaving out training state that is not weights.
                sd = _flatten({k: v for k, v in obj.items() if str(k) not in _TRAINING_STATE})
        if sd:
            for pre in _WRAPPER_PREFIXES:
                if all(k.startswith(pre) for k in sd):
                    sd = {k[len(pre):]: v for k, v in sd.items()}
            return sd
    raise InputError(
        f"{path}: holds no state dict (expected a mapping of names to tensors, possibly under "
        f"'state_dict' or 'model_state_dict'; found {type(obj).__name__})"
    )


@lru_cache(maxsize=2)
def _state_dict(path: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    # Small on purpose: a stream visits models one after the other (A and B of one model are read
    # back to back), so two entries give every hit there is while holding at most two models.
    return extract_state_dict(_torch_load(path), path)


@lru_cache(maxsize=8192)
def read_header(path: str, mtime_ns: int, size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype string)}`` of a torch file (loads it memory-mapped; cached)."""
    sd = _state_dict(path, mtime_ns, size)
    return {k: (tuple(v.shape), dtype_name(v.dtype)) for k, v in sd.items()}


def load_tensor(path: str, mtime_ns: int, size: int, name: str) -> torch.Tensor:
    """One tensor of a torch file (the loaded file stays cached for the next call).

    A copy: the cached state dict must not change if the caller modifies the tensor in place.
    """
    return _state_dict(path, mtime_ns, size)[name].clone()
