"""Family manifests: a small YAML or JSON file that names a family's sources, base and labels.

::

    format: subspace-explorer/family/1
    name: my-loras
    sources: [hf:org/lora-a@3f2c..., ./more-adapters, zoo:planted]
    base: hf:org/base-model@9ab1...        # optional
    name_regex: 'seed(?P<seed>\\d+)'        # optional
    labels: {org/lora-a: {task: qa}}       # optional, per model name

A manifest path is a valid SOURCE.  Relative paths are relative to the manifest's folder.
:func:`save_manifest` pins Hub revisions to the commits that were loaded, so a saved family
reopens identically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from explorer.core.atomic import atomic_write_text
from explorer.core.errors import InputError
from explorer.sources.family import Family

FORMAT = "subspace-explorer/family/1"
# A manifest is a few lines; anything larger is refused before it is parsed.
MAX_MANIFEST_BYTES = 1 << 20
_SCALARS = (str, int, float, bool, type(None))
SUFFIXES = (".yaml", ".yml", ".json")


def is_manifest(path: str | Path) -> bool:
    """True if ``path`` is a file with a manifest suffix (``.yaml``, ``.yml``, ``.json``)."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in SUFFIXES


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse and check a manifest file.

    Raises
    ------
    InputError
        If it cannot be parsed, or ``sources`` is missing or not a list of strings.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"{path}: is larger than {MAX_MANIFEST_BYTES >> 20} MB, too large for a manifest")
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, RecursionError, ValueError) as exc:
        raise InputError(f"{path}: cannot be parsed as a manifest ({exc.__class__.__name__})") from None
    return check_manifest(data, path)


def check_manifest(data: object, path: str | Path) -> dict[str, Any]:
    """Check the parsed content of a manifest (see :func:`read_manifest`); return it normalised.

    Raises
    ------
    InputError
        If a field has the wrong type (a YAML alias bomb fails here too: values must be scalars).
    """
    if not isinstance(data, dict):
        raise InputError(f"{path}: a manifest must be a mapping with a 'sources' list")
    sources = data.get("sources")
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s.strip() for s in sources):
        raise InputError(f"{path}: field 'sources' must be a non-empty list of SOURCE strings")
    if any("\0" in s for s in sources):
        raise InputError(f"{path}: a source in 'sources' holds a NUL character")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, _SCALARS) for x in v.values()) for v in labels.values()
    ):
        raise InputError(f"{path}: field 'labels' must map model names to mappings of plain labels")
    labels = {str(k): {str(a): b for a, b in v.items()} for k, v in labels.items()}
    base = data.get("base")
    if base is not None and (not isinstance(base, str) or "\0" in base):
        raise InputError(f"{path}: field 'base' must be one SOURCE string")
    for key in ("name", "name_regex"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InputError(f"{path}: field {key!r} must be a string")
    if data.get("format") is not None and not isinstance(data["format"], str):
        raise InputError(f"{path}: field 'format' must be a string such as {FORMAT!r}")
    return {**data, "sources": sources, "labels": labels}


def absolute_source(source: str, folder: Path) -> str:
    """A manifest's SOURCE made absolute against the manifest's folder (zoo:/hf: kept as they are)."""
    if ":" in source.split("/")[0] and not Path(source).is_absolute():
        return source  # zoo:NAME, hf:...
    p = Path(source).expanduser()
    return str(p if p.is_absolute() else (folder / p).resolve())


def manifest_dict(family: Family) -> dict[str, Any]:
    """The manifest of a family, with Hub sources pinned to the commits loaded."""
    sources: list[str] = []
    for part in family.parts:
        if part.startswith("hf:"):
            sources.extend(m.source for m in family.models if m.source.startswith("hf:"))
        else:
            sources.append(part)
    out: dict[str, Any] = {"format": FORMAT, "name": family.name, "sources": list(dict.fromkeys(sources))}
    if family.base is not None:
        out["base"] = family.base.source if family.base.source.startswith("hf:") else family.base_source or family.base.source
    labels = {m.name: m.label_dict for m in family.models if m.labels}
    if labels:
        out["labels"] = labels
    return out


def manifest_yaml(data: dict) -> str:
    """A manifest dict as YAML, with libyaml's safe dumper where PyYAML has it (10x the pure-Python one)."""
    return yaml.dump(data, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def save_manifest(family: Family, path: str | Path) -> Path:
    """Write the family's manifest (YAML, or JSON when ``path`` ends in ``.json``); return its path.

    Raises
    ------
    InputError
        If ``path`` has another suffix than ``.yaml``, ``.yml`` or ``.json``.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: a manifest file must end in .yaml, .yml or .json")
    data = manifest_dict(family)
    text = json.dumps(data, indent=2) if path.suffix.lower() == ".json" else manifest_yaml(data)
    return atomic_write_text(path, text)
