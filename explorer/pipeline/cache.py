"""Content-addressed, multi-process disk cache of results (``<cache root>/results``).

Key: sha256 over each input file's fingerprint (path, size, mtime_ns and a hash of its header
bytes), the model names and labels, and whatever the caller adds (layer group, view, options,
engine version) — so editing, replacing or touching a weight file invalidates its entries.

Entry: one file ``results/<key[:2]>/<key>.sxr`` = a magic line, the sha256 of the payload, then
the payload (a safetensors blob whose metadata holds the JSON part and the entry's own key).  It is
written to a temporary file in the same folder, fsync'ed and ``os.replace``'d into place, so readers
never see half an entry; the checksum and the key are verified on every read, and a damaged entry
(or a valid entry of another key, copied onto this one's file) is recomputed, never served.
Several processes share the cache: a per-key ``fcntl.flock`` lets one compute while the others
wait, then read what it wrote.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from explorer.core.atomic import atomic_write_bytes
from explorer.core.paths import cache_root

try:  # POSIX; on other systems the cache still works, without cross-process waiting.
    import fcntl
except ImportError:  # pragma: no cover - exercised only off POSIX
    fcntl = None  # type: ignore[assignment]

MAGIC = b"SXRC1\n"
_HEADER_HASH_LIMIT = 1 << 20
Payload = tuple[dict[str, np.ndarray], dict[str, Any]]


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size, mtime_ns and sha256 of the header bytes of one input file.

    For safetensors the header is the 8-byte length plus the JSON it announces (capped at
    1 MiB); for other files the first 64 KiB.  Hashing the header catches a file replaced by one
    of the same size and timestamp without reading gigabytes of weights.
    """
    p = os.fspath(path)
    st = os.stat(p)
    resolved, digest = _resolved_and_digest(p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return {"path": resolved, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "header_sha256": digest}


@lru_cache(maxsize=1 << 16)
def _resolved_and_digest(path: str, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> tuple[str, str]:
    """The resolved path and header hash of one file, memoised by everything its ``stat`` says.

    Every page run keys its analyses by the family's fingerprint (a 500-adapter family: 1,500
    path resolutions and header reads per page, 1.1 s in the app's threads).  A file rewritten,
    replaced or re-linked has another inode, size, mtime or ctime, so it misses this memo.
    """
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(8)
        n = 64 * 1024
        if len(head) == 8:
            (hlen,) = struct.unpack("<Q", head)
            if 0 < hlen <= size - 8:
                n = min(hlen, _HEADER_HASH_LIMIT)
        head += fh.read(n)
    return str(p.resolve()), hashlib.sha256(head).hexdigest()


def family_fingerprint(family) -> list[dict[str, Any]]:
    """Fingerprints of every model's files, names, labels and adapter config, and of the base model.

    The adapter config (alpha, rank pattern...) changes the LoRA scale s_i, so it is keyed too.
    """
    def one(m) -> dict[str, Any]:
        return {"model": m.name, "labels": [list(p) for p in m.labels],
                "adapter": repr(getattr(m, "adapter", None)),
                "files": [file_fingerprint(f) for f in m.files]}

    out = [one(m) for m in family.models]
    base = getattr(family, "base", None)
    if base is not None:
        out.append({"base": one(base)})
    return out


def make_key(*parts: Any) -> str:
    """sha256 hex of the canonical JSON of ``parts`` (dicts sorted, so order cannot matter)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def encode(arrays: dict[str, np.ndarray], meta: dict[str, Any], key: str | None = None) -> bytes:
    """Serialise arrays (safetensors) and JSON metadata into one checksummed blob.

    ``key``, when given, is stored inside the checksummed payload, binding the blob to that key
    (see :func:`decode`).
    """
    arrs = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    # One metadata entry only: safetensors writes several in hash order, which varies between
    # processes, and equal results must be equal bytes.
    if key is None:
        header = {"json": json.dumps(meta, sort_keys=True)}
    else:
        header = {"entry": json.dumps({"key": key, "meta": meta}, sort_keys=True)}
    payload = st_save(arrs, metadata=header)
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def decode(blob: bytes, key: str | None = None) -> Payload | None:
    """Inverse of :func:`encode`; None if the blob is damaged in any way.

    With ``key``, also None unless the blob was encoded for exactly that key: a checksum proves
    the bytes are intact, not that they are this key's result.
    """
    head = len(MAGIC) + 65
    if len(blob) < head or not blob.startswith(MAGIC) or blob[head - 1 : head] != b"\n":
        return None
    digest, payload = blob[len(MAGIC) : head - 1], blob[head:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        return None
    try:
        arrays = st_load(payload)
        (hlen,) = struct.unpack("<Q", payload[:8])
        header = json.loads(payload[8 : 8 + hlen])["__metadata__"]
        if "entry" in header:
            entry = json.loads(header["entry"])
            stored_key, meta = entry["key"], entry["meta"]
        else:
            stored_key, meta = None, json.loads(header["json"])
    except Exception:  # noqa: BLE001 - any parse failure means "damaged": recompute it
        return None
    if key is not None and stored_key != key:
        return None
    return arrays, meta


class ResultCache:
    """The results cache under ``root`` (default ``<cache root>/results``)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else cache_root() / "results"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.sxr"

    def load(self, key: str) -> Payload | None:
        """The entry for ``key``, or None if absent, damaged or another key's (such a file is removed)."""
        p = self.path(key)
        try:
            blob = p.read_bytes()
        except FileNotFoundError:
            return None
        out = decode(blob, key)
        if out is None:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        return out

    def store(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
        """Write an entry atomically (:func:`explorer.core.atomic.atomic_write_bytes`)."""
        return atomic_write_bytes(self.path(key), encode(arrays, meta, key))

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-key lock (blocks while another process holds it)."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{key}.lock", "a+b") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def get_or_compute(self, key: str, compute: Callable[[], Payload]) -> tuple[Payload, bool]:
        """Return the entry for ``key``, computing and storing it if needed.

        Returns
        -------
        payload : (arrays, meta)
        hit : bool
            True if it came from the cache (possibly written by another process meanwhile).
        """
        got = self.load(key)
        if got is not None:
            return got, True
        with self.lock(key):
            # Another process may have computed it while we waited for the lock.
            got = self.load(key)
            if got is not None:
                return got, True
            arrays, meta = compute()
            self.store(key, arrays, meta)
        # Read back what was stored, so a hit and a miss return bit-identical results.
        got = self.load(key)
        return (got if got is not None else (arrays, meta)), False
