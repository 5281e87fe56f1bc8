"""Safe defaults for a shared server: allowed folders, Hub policy, repo-id validation.

Server mode is off unless ``EXPLORER_SERVER_MODE`` is ``1``/``true``/``yes``/``on``.  It is
read from the environment on every call (not at import), so a test or a launcher can set it.
In server mode:

- local sources (folders, weight files, manifests, ``base`` models, shard files) must lie,
  after resolving every symlink and ``..``, inside one of ``EXPLORER_ALLOWED_ROOTS``
  (``os.pathsep``-separated), or inside an upload's folder ``<cache root>/uploads/<id>`` (never
  the uploads folder itself), the zoo folder or the HF cache; with no roots configured only uploads, the zoo and cached Hub repos
  are usable;
- the Hub is used only for repos already in the local HF cache (nothing is downloaded, nothing
  is listed), except repos named in ``EXPLORER_HUB_ALLOW`` (comma-separated ``org/repo`` or
  ``org/*`` patterns), which may be downloaded.

Hub repo ids are checked against the Hub's own naming rules in every mode, before any call.
"""
from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

from explorer.core.errors import InputError
from explorer.core.paths import cache_root, hub_cache

ENV_SERVER_MODE = "EXPLORER_SERVER_MODE"
ENV_ALLOWED_ROOTS = "EXPLORER_ALLOWED_ROOTS"
ENV_HUB_ALLOW = "EXPLORER_HUB_ALLOW"

#: Every source kind and the label the app's source picker shows for it, in the picker's order.
SOURCE_KIND_LABELS: dict[str, str] = {
    "zoo": "Built-in zoo",
    "local": "Local path",
    "hub": "Hugging Face Hub",
    "upload": "Upload",
}
SOURCE_KINDS: tuple[str, ...] = tuple(SOURCE_KIND_LABELS)

# The Hub's rules (huggingface_hub.utils.validate_repo_id): 1-96 chars of [A-Za-z0-9._-] per
# part, not starting or ending with "-" or ".", no "--" or "..", not ending in ".git".
_REPO_PART = re.compile(r"(?![-.])[A-Za-z0-9._-]{1,96}(?<![-.])")
# Git refs and commit hashes: no spaces, no "..", no control characters.
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,255}")
_GLOB_PART = re.compile(r"[A-Za-z0-9._*?-]{1,96}")
# Longest file or folder name and longest path (bytes) Linux file systems take: past either,
# every file-system call fails with ENAMETOOLONG, so such a path is refused before any is made.
NAME_MAX = 255
PATH_MAX = 4096


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def server_mode() -> bool:
    """True when ``EXPLORER_SERVER_MODE`` is set to a true value (read now)."""
    return _truthy(os.environ.get(ENV_SERVER_MODE))


def allowed_roots() -> tuple[Path, ...]:
    """The folders local sources may come from in server mode (resolved), uploads included."""
    roots = [Path(p).expanduser() for p in os.environ.get(ENV_ALLOWED_ROOTS, "").split(os.pathsep) if p.strip()]
    roots.append(cache_root() / "uploads")
    roots.append(cache_root() / "zoo")
    roots.append(hub_cache())  # Hub snapshots (cache-only in server mode) live there
    return tuple(dict.fromkeys(r.resolve() for r in roots))


def allowed_source_kinds() -> tuple[str, ...]:
    """Source kinds the app should offer: all of them, or in server mode without local roots
    only ``zoo``, ``hub`` (cache/allow-list only) and ``upload``.
    """
    if not server_mode():
        return SOURCE_KINDS
    has_roots = any(p.strip() for p in os.environ.get(ENV_ALLOWED_ROOTS, "").split(os.pathsep))
    return tuple(k for k in SOURCE_KINDS if k != "local" or has_roots)


def source_kind(source: str) -> str:
    """The kind of a SOURCE string: ``zoo`` (``zoo:NAME``), ``hub`` (``hf:...``) or ``local``.

    An uploaded family is a folder under the upload root, so it reads back as ``local``; only
    the picker that made it knows it came from an upload.
    """
    if source.startswith("zoo:"):
        return "zoo"
    if source.startswith("hf:"):
        return "hub"
    return "local"


def check_path_names(path: str | os.PathLike, what: str = "source") -> None:
    """Refuse a path no file system can hold: a name over :data:`NAME_MAX` bytes, or too long in all.

    Without this check the first ``stat`` of such a path raises ``OSError`` (ENAMETOOLONG), which
    is not bad-input handling: the user would see a traceback instead of the path named.

    Raises
    ------
    InputError
        Naming the path and the limit it exceeds.
    """
    text = os.fspath(path)
    longest = max((len(os.fsencode(part)) for part in Path(text).parts), default=0)
    if longest > NAME_MAX:
        raise InputError(f"{text}: {what} has a file or folder name of {longest} bytes; "
                         f"names are at most {NAME_MAX} bytes")
    if len(os.fsencode(text)) > PATH_MAX:
        raise InputError(f"{text}: {what} path is {len(os.fsencode(text))} bytes long; paths are at most "
                         f"{PATH_MAX} bytes")


def check_local_path(path: str | os.PathLike, what: str = "source") -> Path:
    """Return ``path`` resolved; in server mode refuse it unless it lies inside an allowed root.

    Symlinks and ``..`` are resolved first, so neither can lead out of a root.

    Raises
    ------
    InputError
        For a name or path too long for any file system (:func:`check_path_names`); in server
        mode, for a path outside every allowed root (or one that cannot be resolved, such as a
        symlink loop).
    """
    check_path_names(path, what)
    p = Path(path).expanduser()
    try:
        real = p.resolve(strict=False)
    except (OSError, RuntimeError):  # RuntimeError: symlink loop on older Pythons
        raise InputError(f"{path}: cannot be resolved (a symlink loop?)") from None
    if not server_mode():
        return real
    uploads = (cache_root() / "uploads").resolve()
    if real == uploads or (real.is_relative_to(uploads) and real.relative_to(uploads).parts[0].startswith(".")):
        # Each upload is opened by its own folder (by the session that made it, see
        # explorer.sources.upload.check_upload_access); the folder of all of them is no source.
        raise InputError(f"{path}: the uploads folder itself is not a source (server mode: an upload is "
                         "opened from its own folder, by the session that made it)")
    for root in allowed_roots():
        if real == root or real.is_relative_to(root):
            return real
    raise InputError(f"{path}: {what} is outside the folders this server allows "
                     f"(server mode; allowed: {ENV_ALLOWED_ROOTS})")


def validate_repo_id(repo: str, source: str | None = None, *, glob: bool = False) -> None:
    """Check a Hub repo id (``org/name``) against the Hub's naming rules, before any call.

    Parameters
    ----------
    repo : str
        ``org/name``; with ``glob=True`` the name may hold ``*`` and ``?``.
    source : str, optional
        The SOURCE string to name in the message.

    Raises
    ------
    InputError
        If the id is malformed.
    """
    where = source or f"hf:{repo}"
    parts = repo.split("/")
    bad = len(parts) != 2 or len(repo) > 96 * 2 + 1
    if not bad:
        org, name = parts
        bad = not _REPO_PART.fullmatch(org) or ("--" in org or ".." in org)
        if glob:
            bad = bad or not _GLOB_PART.fullmatch(name) or ".." in name
        else:
            bad = bad or not _REPO_PART.fullmatch(name) or "--" in name or ".." in name or name.endswith(".git")
    if bad:
        shown = repo.encode("ascii", "backslashreplace").decode()
        raise InputError(f"{where}: {shown!r} is not a valid Hub repo id (ORG/NAME of letters, digits, "
                         "'-', '_', '.'; no '--' or '..')")


def validate_revision(rev: str, source: str) -> None:
    """Check a revision (branch, tag or commit) before it reaches a URL or a cache path.

    Raises
    ------
    InputError
        If it holds characters a git ref cannot, or ``..``.
    """
    if not _REVISION.fullmatch(rev) or ".." in rev or rev.startswith("/"):
        shown = rev.encode("ascii", "backslashreplace").decode()
        raise InputError(f"{source}: revision {shown!r} is not a valid branch, tag or commit")


def hub_download_allowed(repo: str) -> bool:
    """May ``repo`` be downloaded (or the Hub listed for it)?  Always outside server mode;
    in server mode only when ``EXPLORER_HUB_ALLOW`` names it.
    """
    if not server_mode():
        return True
    allow = [p.strip() for p in os.environ.get(ENV_HUB_ALLOW, "").split(",") if p.strip()]
    return any(fnmatch.fnmatchcase(repo, p) for p in allow)
