"""Turn a SOURCE string into a :class:`~explorer.family.Family`.

SOURCE is ``zoo:NAME``, ``hf:ORG/REPO[@REV][,ORG/REPO...]`` (globs ``hf:Org/Prefix*`` too), a
manifest file (``.yaml``/``.yml``/``.json``), a local folder, or a single weight file.
"""
from __future__ import annotations

import errno
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..family import Family
from ..security import check_local_path
from .folder import load_folder, load_model
from .readers import is_weight_file

ProgressFn = Callable[[int, int, str], None]


def load_family(
    source: str,
    progress: ProgressFn | None = None,
    *,
    base: str | None = None,
    name_regex: str | None = None,
    _depth: int = 0,
) -> Family:
    """Resolve a SOURCE string into a family.

    Parameters
    ----------
    source : str
        ``zoo:NAME`` (built on first use), ``hf:...``, a manifest file, a folder or a weight file.
    progress : callable(done, total, label), optional
        Reports the zoo build or the Hub downloads, when needed.
    base : str, optional
        SOURCE of a base model (file, model folder, ``hf:org/repo``) to attach for the delta view.
    name_regex : str, optional
        Regex with named groups turning model names (file/folder names, repo ids) into labels.

    Raises
    ------
    InputError
        If the source does not exist or holds no usable model.
    """
    source = source.strip()
    if "\0" in source:
        raise InputError(f"{source!r}: a SOURCE cannot hold a NUL character")
    if source.startswith("zoo:"):
        from ..zoo import ensure_built

        folder = ensure_built(source[4:], progress=progress)
        fam = load_folder(folder, name=source, source=source, name_regex=name_regex)
    elif source.startswith("hf:"):
        from .hub import load_hub

        fam = load_hub(source, progress=progress, name_regex=name_regex)
    else:
        path = Path(source).expanduser()
        from .manifest import is_manifest, load_manifest

        _check_link(path, source)
        check_local_path(path)

        if path.is_file() and (path.name.endswith(".index.json") or path.name == "adapter_config.json"):
            # The index of a sharded checkpoint or an adapter's config stands for its folder: one model.
            fam = Family(name=path.parent.name, source=source, models=[load_model(path.parent, path.parent.name)])
        elif is_manifest(path):
            fam = load_manifest(path, progress=progress, _depth=_depth)
        elif path.is_dir():
            fam = load_folder(path, source=source, name_regex=name_regex)
        elif path.is_file() and is_weight_file(path.name):
            fam = Family(name=path.stem, source=source, models=[load_model(path, path.stem)])
        elif path.exists():
            raise InputError(f"{source}: is not a folder, a weight file or a manifest (.yaml, .yml, .json)")
        else:
            raise InputError(f"{source!r}: is neither zoo:NAME, hf:ORG/REPO, nor an existing file or folder")
    if base is not None:
        from .manifest import resolve_base

        fam = replace(fam, base=resolve_base(base, progress), base_source=base)
    return fam


def _check_link(path: Path, source: str) -> None:
    """Name a dangling symlink or a symlink loop instead of calling it a missing file."""
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(f"{source}: is a symlink loop") from None
        raise InputError(f"{source}: is a symlink to a missing file or folder")
