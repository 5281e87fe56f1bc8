"""Browser uploads: files written into a content-addressed folder under the cache root.

The folder is ``<cache root>/uploads/<sha256 of names and contents>``, so uploading the same
files again reuses it and its SOURCE string (the folder path) reopens the family later.  Files
may carry relative paths (``adapter-1/adapter_config.json``) to upload model folders, and a
``.zip`` is unpacked in place, which is how several PEFT adapter folders travel through a
browser's file picker.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from explorer.core.errors import InputError
from explorer.core.paths import cache_root
from explorer.sources import readers, sharded
from explorer.sources.family import Family, check_strict
from explorer.sources.folder import is_model_dir, load_folder
from explorer.sources.peft import ADAPTER_CONFIG

# Refuse archives that would unpack to more than this (a zip bomb must not fill the disk).
MAX_UNPACKED_BYTES = 64 * 1024**3


def _safe_relpath(name: str) -> PurePosixPath:
    rel = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts or rel.is_absolute() or ".." in parts:
        raise InputError(f"upload {name!r}: is not a plain relative file name")
    return PurePosixPath(*parts)


def _unzip(data: bytes, name: str, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
            raise InputError(f"upload {name!r}: unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB")
        for info in infos:
            rel = _safe_relpath(info.filename)
            if rel.parts[0] == "__MACOSX":
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise InputError(f"upload {name!r}: is not a readable zip archive ({exc})") from None


def upload_dir(files: Sequence[tuple[str, bytes]]) -> Path:
    """Write uploaded files into their content-addressed folder (once) and return it.

    Raises
    ------
    InputError
        If nothing was uploaded, a name is not a plain relative path, or a zip is unreadable.
    """
    if not files:
        raise InputError("upload: no files were given")
    entries = sorted((str(_safe_relpath(n)), bytes(d)) for n, d in files)
    h = hashlib.sha256()
    for n, d in entries:
        h.update(n.encode() + b"\0" + hashlib.sha256(d).digest())
    folder = cache_root() / "uploads" / h.hexdigest()[:24]
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        for n, d in entries:
            if n.lower().endswith(".zip"):
                _unzip(d, n, tmp)
                continue
            target = tmp / n
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(d)
                fh.flush()
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, folder)  # atomic: a half-written upload is never seen under its name
        except OSError:
            if not folder.is_dir():  # another process won the race with identical content
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _is_folder_of_models(folder: Path) -> bool:
    """True if an upload's lone top folder holds the models rather than being one model.

    It is one model when it is an adapter or a sharded checkpoint, or holds a single weight file;
    several loose weight files are several models (a zip of one folder of checkpoints), not one
    model merged from many files.
    """
    if not is_model_dir(folder):
        return True
    if (folder / ADAPTER_CONFIG).is_file() or sharded.find_index(folder) is not None:
        return False
    return sum(1 for p in folder.iterdir() if p.is_file() and readers.is_weight_file(p.name)) > 1


def family_from_uploads(
    files: Sequence[tuple[str, bytes]], name: str | None = None, name_regex: str | None = None,
    *, strict: bool = False,
) -> Family:
    """Build a family from uploaded ``(filename, bytes)`` pairs.

    Each weight file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) is a model; files under a
    relative folder (or inside a ``.zip``) form model folders (PEFT adapters, sharded
    checkpoints); ``metadata.csv`` and ``base.*`` work as in a local folder.  A zip of one folder
    unpacks to that folder: the family is inside it.  Members that cannot be read are listed in
    ``Family.skipped``; with ``strict`` the family is refused instead.

    Returns
    -------
    Family
        Its ``source`` is the upload folder's path, a valid SOURCE for later sessions.
    """
    folder = upload_dir(files)
    root = folder
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and _is_folder_of_models(entries[0]):
        root = entries[0]
    fam = load_folder(root, name=name or f"upload-{folder.name[:8]}", source=str(root), name_regex=name_regex)
    if strict:
        check_strict(fam.source, fam.skipped)
    return fam
