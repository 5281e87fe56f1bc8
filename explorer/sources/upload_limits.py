"""Limits of browser uploads, checked while they are unpacked (see :mod:`explorer.sources.upload`).

Uploads are bounded.  Everything is streamed to disk in chunks (never a whole file or member in
memory), and these limits are checked while it is written -- from the zip's directory before
anything is unpacked, then again on the bytes actually written -- each refusal one
:class:`InputError` naming the limit, its variable and the member:

====================================  ==========================================  ==========
variable                              limit                                       default
====================================  ==========================================  ==========
``EXPLORER_UPLOAD_MAX_BYTES``         total unpacked size of one upload           16 GiB
``EXPLORER_UPLOAD_MAX_FILES``         files in one upload (zip members included)  10000
``EXPLORER_UPLOAD_MAX_FILE_BYTES``    size of one file or unpacked member         8 GiB
``EXPLORER_UPLOAD_MAX_RATIO``         unpacked / compressed size of a zip member  200
``EXPLORER_UPLOAD_SESSION_BYTES``     total of one session's uploads              32 GiB
====================================  ==========================================  ==========

(the ratio is checked for members that unpack past 1 MiB).  A refused or failed upload leaves
nothing behind: it is unpacked into a ``.tmp-*`` folder that is removed, and renamed to its
folder only when complete; ``.tmp-*`` folders older than an hour (an interrupted server) are
swept whenever an upload starts.  Zip members that collide (a file and a folder of one name, a
repeated name) or have a name component over 255 bytes are refused with one message.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Union

from explorer.core.errors import InputError

#: One uploaded file: its name and its content (bytes, or a seekable binary file such as
#: Streamlit's ``UploadedFile``, read in chunks).
Upload = tuple[str, Union[bytes, bytearray, memoryview, BinaryIO]]

ENV_MAX_BYTES = "EXPLORER_UPLOAD_MAX_BYTES"
ENV_MAX_FILES = "EXPLORER_UPLOAD_MAX_FILES"
ENV_MAX_FILE_BYTES = "EXPLORER_UPLOAD_MAX_FILE_BYTES"
ENV_MAX_RATIO = "EXPLORER_UPLOAD_MAX_RATIO"
ENV_SESSION_BYTES = "EXPLORER_UPLOAD_SESSION_BYTES"

#: Defaults of the limits (each overridden by its variable above).
MAX_UNPACKED_BYTES = 16 * 1024**3
MAX_FILES = 10_000
MAX_FILE_BYTES = 8 * 1024**3
MAX_RATIO = 200.0
MAX_SESSION_BYTES = 32 * 1024**3
#: Members unpacking to less than this are not held to the ratio (a small zero tensor is fine).
RATIO_MIN_BYTES = 1024**2
#: ``.tmp-*`` folders older than this (seconds) are left from an interrupted upload and swept.
STALE_TMP_SECONDS = 3600
NAME_MAX = 255
CHUNK = 1024**2


@dataclass(frozen=True)
class UploadLimits:
    """The limits one upload is held to (see the module docstring)."""

    max_bytes: int = MAX_UNPACKED_BYTES
    max_files: int = MAX_FILES
    max_file_bytes: int = MAX_FILE_BYTES
    max_ratio: float = MAX_RATIO
    session_bytes: int = MAX_SESSION_BYTES

    @classmethod
    def from_env(cls) -> "UploadLimits":
        """The defaults, each replaced by its environment variable when set (read now).

        Raises
        ------
        InputError
            For a variable that is not a positive number.
        """
        def get(var: str, default: float, kind: type) -> float:
            raw = os.environ.get(var, "").strip()
            if not raw:
                return default
            try:
                value = kind(float(raw))
            except ValueError:
                value = 0
            if not value > 0:
                raise InputError(f"{var}={raw!r}: an upload limit must be a positive number")
            return value

        return cls(get(ENV_MAX_BYTES, MAX_UNPACKED_BYTES, int), get(ENV_MAX_FILES, MAX_FILES, int),
                   get(ENV_MAX_FILE_BYTES, MAX_FILE_BYTES, int), get(ENV_MAX_RATIO, MAX_RATIO, float),
                   get(ENV_SESSION_BYTES, MAX_SESSION_BYTES, int))


def format_size(n: float) -> str:
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} bytes"


def safe_relpath(name: str, where: str | None = None) -> PurePosixPath:
    where = where or repr(name)
    rel = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts or rel.is_absolute() or ".." in parts:
        raise InputError(f"upload {where}: is not a plain relative file name")
    longest = max(len(os.fsencode(p)) for p in parts)
    if longest > NAME_MAX:
        raise InputError(f"upload {where}: has a file or folder name of {longest} bytes; "
                         f"names are at most {NAME_MAX} bytes")
    return PurePosixPath(*parts)


def as_stream(data) -> BinaryIO:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(data)
    data.seek(0)
    return data


class Budget:
    """Counts files and bytes of one upload against its limits while they are written."""

    def __init__(self, limits: UploadLimits, used: int) -> None:
        self.limits, self.used, self.files, self.total = limits, used, 0, 0

    def refuse(self, where: str, what: str, limit: str, var: str) -> None:
        raise InputError(f"upload {where}: {what}; the limit is {limit} ({var})")

    def check_declared(self, where: str, size: int, compressed: int | None) -> None:
        lim = self.limits
        if size > lim.max_file_bytes:
            self.refuse(where, f"unpacks to {format_size(size)}", f"{format_size(lim.max_file_bytes)} per file",
                         ENV_MAX_FILE_BYTES)
        if compressed is not None and size > RATIO_MIN_BYTES and size > lim.max_ratio * max(compressed, 1):
            self.refuse(where, f"unpacks {size / max(compressed, 1):.0f} times its compressed size "
                         "(a zip bomb?)", f"a ratio of {lim.max_ratio:g}", ENV_MAX_RATIO)

    def add_file(self, where: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            self.refuse(where, f"is file {self.files}", f"{self.limits.max_files} files", ENV_MAX_FILES)

    def add_bytes(self, where: str, n: int) -> None:
        self.total += n
        lim = self.limits
        if self.total > lim.max_bytes:
            self.refuse(where, f"takes the upload past {format_size(lim.max_bytes)} unpacked",
                         f"{format_size(lim.max_bytes)} per upload", ENV_MAX_BYTES)
        if self.used + self.total > lim.session_bytes:
            self.refuse(where, f"takes this session's uploads past {format_size(lim.session_bytes)}",
                         f"{format_size(lim.session_bytes)} per session", ENV_SESSION_BYTES)

    def copy(self, src: BinaryIO, target: Path, where: str, compressed: int | None = None) -> None:
        """Stream ``src`` into a new file ``target``, checking every limit on each chunk."""
        self.add_file(where)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            dst = open(target, "xb")
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise InputError(f"upload {where}: collides with another member (a file and a folder of one "
                             "name, or a name given twice)") from None
        written = 0
        with dst:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                self.check_declared(where, written, compressed)
                self.add_bytes(where, len(chunk))
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
