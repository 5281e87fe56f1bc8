"""Turn a SOURCE string into a :class:`~explorer.sources.family.Family`.

SOURCE is ``zoo:NAME``, ``hf:ORG/REPO[@REV][,ORG/REPO...]`` (globs ``hf:Org/Prefix*`` too), a
manifest file (``.yaml``/``.yml``/``.json``), a local folder, or a single weight file.
"""
from __future__ import annotations

import errno
import os
from dataclasses import replace
from pathlib import Path

from explorer.core.errors import InputError
from explorer.core.progress import ProgressFn
from explorer.sources.family import (
    Family,
    ModelRef,
    Skipped,
    check_strict,
    labels_from_mapping,
)
from explorer.sources.folder import is_model_dir, load_folder, load_model
from explorer.sources.hub import load_hub
from explorer.sources.labels import compile_name_regex, regex_labels
from explorer.sources.manifest import absolute_source, is_manifest, read_manifest
from explorer.sources.policy import check_local_path, check_path_names
from explorer.sources.readers import is_weight_file
from explorer.zoo import ensure_built


def load_family(
    source: str,
    progress: ProgressFn | None = None,
    *,
    base: str | None = None,
    name_regex: str | None = None,
    strict: bool = False,
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
    strict : bool
        Refuse the family if any member cannot be used, instead of skipping it (and listing it
        in ``Family.skipped``).

    Raises
    ------
    InputError
        If the source does not exist or holds no usable model; with ``strict``, if a member is
        bad (one line naming the first).
    """
    source = source.strip()
    if "\0" in source:
        raise InputError(f"{source!r}: a SOURCE cannot hold a NUL character")
    if source.startswith("zoo:"):
        folder = ensure_built(source[4:], progress=progress)
        fam = load_folder(folder, name=source, source=source, name_regex=name_regex)
    elif source.startswith("hf:"):
        fam = load_hub(source, progress=progress, name_regex=name_regex)
    else:
        path = Path(source).expanduser()
        check_path_names(path)  # before the first stat, which a too-long name makes raise OSError
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
    if strict:
        check_strict(source, fam.skipped)
    if base is not None:
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


def resolve_base(source: str, progress: ProgressFn | None = None) -> ModelRef:
    """The one model a base SOURCE names (a file, a model folder, ``hf:org/repo[@rev]``).

    Raises
    ------
    InputError
        If it does not resolve to exactly one model.
    """
    p = Path(source).expanduser()
    check_path_names(p, "base")
    if p.is_file() or (p.is_dir() and is_model_dir(p)):
        return load_model(p, "base", source=str(p))
    fam = load_family(source, progress=progress)
    if len(fam) != 1:
        raise InputError(f"base {source!r}: resolves to {len(fam)} models; a base must be one model")
    return replace(fam.models[0], name="base")


def load_manifest(path: str | Path, progress: ProgressFn | None = None, _depth: int = 0) -> Family:
    """Load the family a manifest describes (models of all sources, in order).

    Raises
    ------
    InputError
        If the manifest is invalid, or no source yields a usable model.  Models that fail, and
        models whose name repeats an earlier source's, are listed in ``Family.skipped``.
    """
    path = Path(path).expanduser().resolve()
    if _depth > 4:
        raise InputError(f"{path}: manifests nest more than 4 deep (a manifest lists itself?)")
    data = read_manifest(path)
    rx = compile_name_regex(data.get("name_regex"))
    models: list[ModelRef] = []
    skipped: list[Skipped] = []
    parts = tuple(absolute_source(s, path.parent) for s in data["sources"])
    for src in parts:
        fam = load_family(src, progress=progress, _depth=_depth + 1)
        skipped.extend(fam.skipped)
        have = {m.name for m in models}
        for m in fam.models:
            if m.name in have:
                skipped.append(Skipped(m.name, m.source or src,
                                       f"from {src} repeats the name of a model of an earlier source"))
                continue
            extra = {**regex_labels(rx, m.name), **data["labels"].get(m.name, {})}
            models.append(replace(m, labels=labels_from_mapping({**m.label_dict, **extra})) if extra else m)
    base_src = absolute_source(data["base"], path.parent) if data.get("base") else None
    base = resolve_base(base_src, progress) if base_src else None
    return Family(
        name=str(data.get("name") or path.stem), source=str(path), models=models, skipped=skipped,
        base=base, parts=parts, base_source=base_src,
    )
