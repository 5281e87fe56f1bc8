"""Browser uploads: files written into a content-addressed folder under the cache root.

The folder is ``<cache root>/uploads/<sha256 of names and contents>``, so uploading the same
files again reuses it and its SOURCE string (the folder path) reopens the family later; a file
fixed and uploaded again under the same name and size gets a new folder.  Files may carry
relative paths (``adapter-1/adapter_config.json``) to upload model folders, and a ``.zip`` is
unpacked in place, which is how several PEFT adapter folders travel through a browser's file
picker.

Uploads are bounded (:mod:`explorer.sources.upload_limits` lists the limits and their
environment variables): everything is streamed to disk in chunks, checked while it is written,
and a refused or failed upload leaves nothing behind.

Isolation: in server mode the uploads folder itself is no source (:mod:`explorer.sources.policy`),
and :func:`check_upload_access` lets the app open only the upload folders its session made.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

from explorer.core.errors import InputError
from explorer.core.paths import cache_root
from explorer.sources import readers, sharded
from explorer.sources.family import Family, check_strict
from explorer.sources.folder import is_model_dir, load_folder
from explorer.sources.peft import ADAPTER_CONFIG
from explorer.sources.upload_limits import (
    CHUNK,
    ENV_MAX_BYTES,
    ENV_MAX_FILE_BYTES,
    ENV_MAX_FILES,
    ENV_MAX_RATIO,
    ENV_SESSION_BYTES,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_RATIO,
    MAX_SESSION_BYTES,
    MAX_UNPACKED_BYTES,
    STALE_TMP_SECONDS,
    Budget,
    Upload,
    UploadLimits,
    as_stream,
    format_size,
    safe_relpath,
)

__all__ = ["ENV_MAX_BYTES", "ENV_MAX_FILES", "ENV_MAX_FILE_BYTES", "ENV_MAX_RATIO", "ENV_SESSION_BYTES",
           "MAX_FILES", "MAX_FILE_BYTES", "MAX_RATIO", "MAX_SESSION_BYTES", "MAX_UNPACKED_BYTES", "Upload",
           "UploadLimits", "check_upload_access", "family_from_uploads", "sweep_stale", "upload_dir",
           "upload_folder", "upload_id", "uploads_root"]

def uploads_root() -> Path:
    """The folder holding every upload's folder (``<cache root>/uploads``)."""
    return cache_root() / "uploads"


def _unzip(src: BinaryIO, name: str, dest: Path, budget: Budget) -> None:
    try:
        zf = zipfile.ZipFile(src)
        infos = [i for i in zf.infolist() if not i.is_dir()]
        members = []
        declared = 0
        for info in infos:
            where = f"{name!r}, member {info.filename!r}"
            rel = safe_relpath(info.filename, where)
            if rel.parts[0] == "__MACOSX":
                continue
            budget.check_declared(where, info.file_size, info.compress_size)
            declared += info.file_size
            members.append((info, rel, where))
        # Refuse from the zip's directory first: nothing is written for an archive that is too big.
        if budget.files + len(members) > budget.limits.max_files:
            budget.refuse(repr(name), f"holds {len(members)} files", f"{budget.limits.max_files} files",
                           ENV_MAX_FILES)
        if budget.total + declared > budget.limits.max_bytes:
            budget.refuse(repr(name), f"unpacks to {format_size(declared)}", f"{format_size(budget.limits.max_bytes)} "
                           "per upload", ENV_MAX_BYTES)
        if budget.used + budget.total + declared > budget.limits.session_bytes:
            budget.refuse(repr(name), f"takes this session's uploads past {format_size(budget.limits.session_bytes)}",
                           f"{format_size(budget.limits.session_bytes)} per session", ENV_SESSION_BYTES)
        for info, rel, where in members:
            with zf.open(info) as member:
                budget.copy(member, dest / rel, where, compressed=info.compress_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise InputError(f"upload {name!r}: is not a readable zip archive ({exc})") from None


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def sweep_stale(root: Path | None = None, max_age: float = STALE_TMP_SECONDS) -> int:
    """Remove ``.tmp-*`` folders older than ``max_age`` seconds (interrupted uploads); return how many."""
    root = uploads_root() if root is None else root
    if not root.is_dir():
        return 0
    now, n = time.time(), 0
    for p in root.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age:
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def upload_id(files: Sequence[Upload]) -> str:
    """The content hash naming an upload's folder: sha256 over sorted names and content hashes."""
    digests = []
    for n, d in files:
        h = hashlib.sha256()
        src = as_stream(d)
        while chunk := src.read(CHUNK):
            h.update(chunk)
        digests.append((str(safe_relpath(n)), h.digest()))
    h = hashlib.sha256()
    for n, dig in sorted(digests):
        h.update(n.encode() + b"\0" + dig)
    return h.hexdigest()[:24]


def upload_folder(source: str | os.PathLike) -> Path | None:
    """The upload folder (``<cache root>/uploads/<id>``) holding ``source``, or None if it is no upload."""
    try:
        real = Path(source).expanduser().resolve()
        rel = real.relative_to(uploads_root().resolve())
    except (ValueError, OSError, RuntimeError):
        return None
    return uploads_root().resolve() / rel.parts[0] if rel.parts else uploads_root().resolve()


def check_upload_access(source: str, allowed: Iterable[str | os.PathLike]) -> None:
    """Refuse ``source`` when it lies in the uploads folder but not in one of the ``allowed`` upload folders.

    The app passes the folders its session uploaded, so one session cannot open another's
    uploads (or the uploads folder itself); sources outside the uploads folder pass.

    Raises
    ------
    InputError
        Naming the source.
    """
    folder = upload_folder(source)
    if folder is None:
        return
    if folder == uploads_root().resolve():
        raise InputError(f"{source}: the uploads folder itself is not a source; open an upload from its "
                         "own folder, in the session that uploaded it")
    mine = {Path(a).expanduser().resolve() for a in allowed}
    if folder not in mine:
        raise InputError(f"{source}: is an upload of another session (uploads are visible only to the "
                         "session that made them); upload the files again")


def upload_dir(files: Sequence[Upload], *, session_dirs: Iterable[str | os.PathLike] = (),
               limits: UploadLimits | None = None) -> Path:
    """Write uploaded files into their content-addressed folder (once) and return it.

    Parameters
    ----------
    files : sequence of (name, bytes or binary file)
        File objects are read in chunks from the start (they must be seekable).
    session_dirs : iterable of paths
        The upload folders this session made before; their size counts against the session limit.
    limits : UploadLimits, optional
        Default: :meth:`UploadLimits.from_env`.

    Raises
    ------
    InputError
        If nothing was uploaded, a name is not a plain relative path (or too long), a zip is
        unreadable or has colliding members, or a limit is exceeded; nothing is left behind.
    """
    return _prepare(files, session_dirs, limits)[0]


def _prepare(files: Sequence[Upload], session_dirs: Iterable[str | os.PathLike] = (),
             limits: UploadLimits | None = None) -> tuple[Path, bool]:
    """Sweep stale ``.tmp-*`` folders, then write the upload (see :func:`upload_dir`)."""
    if not files:
        raise InputError("upload: no files were given")
    limits = UploadLimits.from_env() if limits is None else limits
    root = uploads_root()
    sweep_stale(root)
    folder = root / upload_id(files)
    mine = {Path(d).resolve() for d in session_dirs}
    used = sum(_tree_bytes(d) for d in mine if d.is_dir() and d != folder.resolve())
    return _write_upload(files, folder, used, limits)


def _write_upload(files: Sequence[Upload], folder: Path, used: int, limits: UploadLimits) -> tuple[Path, bool]:
    """Unpack ``files`` into ``folder`` unless it exists; return it and whether this call made it."""
    root = folder.parent
    if folder.is_dir():
        if used + _tree_bytes(folder) > limits.session_bytes:
            raise InputError(f"upload {folder.name}: takes this session's uploads past "
                             f"{format_size(limits.session_bytes)}; the limit is {format_size(limits.session_bytes)} "
                             f"per session ({ENV_SESSION_BYTES})")
        return folder, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    budget = Budget(limits, used)
    entries = sorted(((str(safe_relpath(n)), d) for n, d in files), key=lambda e: e[0])
    try:
        for n, d in entries:
            try:
                if n.lower().endswith(".zip"):
                    _unzip(as_stream(d), n, tmp, budget)
                else:
                    budget.copy(as_stream(d), tmp / n, repr(n))
            except OSError as exc:
                why = ("a name too long for the file system" if exc.errno == errno.ENAMETOOLONG else
                       "no space left on the disk" if exc.errno == errno.ENOSPC else exc.strerror or str(exc))
                raise InputError(f"upload {n!r}: cannot be written ({why})") from None
        try:
            os.rename(tmp, folder)  # atomic: a half-written upload is never seen under its name
        except OSError:
            if not folder.is_dir():  # another process won the race with identical content
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, True


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
    files: Sequence[Upload], name: str | None = None, name_regex: str | None = None,
    *, strict: bool = False, session_dirs: Iterable[str | os.PathLike] = (),
) -> Family:
    """Build a family from uploaded ``(filename, bytes)`` pairs.

    Each weight file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``) is a model; files under a
    relative folder (or inside a ``.zip``) form model folders (PEFT adapters, sharded
    checkpoints); ``metadata.csv`` and ``base.*`` work as in a local folder.  A zip of one folder
    unpacks to that folder: the family is inside it.  Members that cannot be read are listed in
    ``Family.skipped``; with ``strict`` the family is refused instead.  Files are streamed to
    disk within the upload limits (:func:`upload_dir`, which ``session_dirs`` is passed to).

    Returns
    -------
    Family
        Its ``source`` is the upload folder's path, a valid SOURCE for later sessions.
    """
    folder, made = _prepare(files, session_dirs)
    try:
        root = folder
        entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        if len(entries) == 1 and entries[0].is_dir() and _is_folder_of_models(entries[0]):
            root = entries[0]
        fam = load_folder(root, name=name or f"upload-{folder.name[:8]}", source=str(root), name_regex=name_regex)
        if strict:
            check_strict(fam.source, fam.skipped)
    except InputError:
        if made:  # a refused upload leaves nothing behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return fam
