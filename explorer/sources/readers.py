"""Header-only inspection and one-tensor-at-a-time loading of weight files.

Two formats: safetensors (a JSON header in front of the data, so the catalog reads no tensor
bytes) and PyTorch pickles (``.pt/.pth/.bin``, see :mod:`explorer.sources.torchfile`).  The
format is chosen by file extension.
"""
from __future__ import annotations

import json
import os
import struct
from functools import lru_cache

import torch
from safetensors import safe_open

from explorer.core.errors import InputError
from explorer.sources import torchfile

# A header larger than this is refused before it is read: real headers are a few MB at most.
MAX_HEADER_BYTES = 100 * 1024 * 1024
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors",) + TORCH_SUFFIXES
#: Bytes per element of each safetensors dtype: data offsets are checked against shapes, and stored
#: sizes counted, with it.
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
#: Dtypes the engine analyses (upcast to at least float32); anything else is refused by name.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def is_weight_file(name: str) -> bool:
    """True if the file name has a weight-file extension."""
    return name.lower().endswith(WEIGHT_SUFFIXES)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of repeated keys silently; two tensors of one name are corrupt.
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(ValueError):
    pass


def _shown(name: str) -> str:
    """A name safe to print on any terminal (lone surrogates and controls escaped)."""
    return repr(name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace"))


@lru_cache(maxsize=8192)
def _header_cached(path: str, mtime_ns: int, size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    # Unbuffered, so exactly the 8 length bytes and the header are read (the bench counts them).
    try:
        with open(path, "rb", buffering=0) as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise InputError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES:
                raise InputError(f"{path}: safetensors header claims {n} bytes, over the "
                                 f"{MAX_HEADER_BYTES >> 20} MB limit (corrupt or not safetensors)")
            if 8 + n > size:
                raise InputError(f"{path}: truncated or not safetensors (header claims {n} bytes, file has {size})")
            blob = fh.read(n)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    try:
        header = json.loads(blob, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise InputError(f"{path}: safetensors header names tensor {_shown(str(exc))} twice") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: safetensors header is not valid JSON (UTF-8 expected, {exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: safetensors header is not a JSON object")
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    spans: list[tuple[int, int, str]] = []
    data_size = size - 8 - n
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # a JSON-escaped lone surrogate: not a name any tool can write
            raise InputError(f"{path}: tensor name {_shown(name)} is not valid UTF-8") from None
        try:
            shape = tuple(_as_int(s) for s in spec["shape"])
            dtype = str(spec["dtype"])
            begin, end = (_as_int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {_shown(name)} has a malformed header entry") from None
        if any(s < 0 for s in shape):
            raise InputError(f"{path}: tensor {_shown(name)} has a negative dimension in shape {shape}")
        if not 0 <= begin <= end <= data_size:
            raise InputError(f"{path}: tensor {_shown(name)} lies beyond the end of the file (truncated?)")
        numel = 1
        for s in shape:
            numel *= s
        if dtype in ITEMSIZE and numel * ITEMSIZE[dtype] != end - begin:
            raise InputError(f"{path}: tensor {_shown(name)} has {end - begin} data bytes for shape {shape} {dtype}")
        out[name] = (shape, dtype)
        if end > begin:
            spans.append((begin, end, name))
    spans.sort()
    for (_, e0, a), (b1, _, b) in zip(spans, spans[1:]):
        if b1 < e0:
            raise InputError(f"{path}: tensors {_shown(a)} and {_shown(b)} overlap in the data section")
    return out


def _as_int(x: object) -> int:
    # int() would accept 2.7, "12" or True; a header holds JSON integers only.
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(x)
    return x


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None


def read_header(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Return ``{stored tensor name: (shape, dtype)}`` of a weight file.

    Safetensors: only the header is read.  Torch files: the pickle is loaded memory-mapped
    (tensor data is not read) and cached, see :mod:`explorer.sources.torchfile`.

    Raises
    ------
    InputError
        If the file is missing, truncated, corrupt, or refused by ``weights_only``.
    """
    st = _stat(path)
    if path.lower().endswith(TORCH_SUFFIXES):
        return torchfile.read_header(path, st.st_mtime_ns, st.st_size)
    return _header_cached(path, st.st_mtime_ns, st.st_size)


def load_tensor(path: str, name: str) -> torch.Tensor:
    """Load one stored tensor from a weight file (safetensors: memory-mapped, others untouched)."""
    header = read_header(path)  # validates first, with a clear message
    if name not in header:
        raise InputError(f"{path}: has no tensor {name!r}")
    if path.lower().endswith(TORCH_SUFFIXES):
        st = _stat(path)
        return torchfile.load_tensor(path, st.st_mtime_ns, st.st_size, name)
    try:
        with safe_open(path, framework="pt") as fh:
            return fh.get_tensor(name)
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise InputError(f"{path}: tensor {name!r} cannot be read ({exc})") from None
