"""Where model labels come from: model cards, file names, CSV sidecars.

Sources, merged per model in this order (later wins, so the user's explicit CSV has the last
word): ``adapter_config.json`` (see :mod:`explorer.sources.peft`), the README/model-card YAML
header, a regex with named groups applied to the model name, a ``metadata.csv`` sidecar.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

from explorer.core.errors import InputError, OptionError

SIDECAR = "metadata.csv"


def readme_labels(folder: str | Path) -> dict[str, str]:
    """Scalar fields (and lists, comma-joined) of the YAML header of ``folder/README.md``.

    A model card starts with a ``---`` line, YAML, and another ``---`` line; files without one
    give no labels.  Malformed YAML gives no labels rather than an error: a README is prose.
    """
    path = Path(folder) / "README.md"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not m:
        return {}
    try:
        card = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    if not isinstance(card, dict):
        return {}
    out: dict[str, str] = {}
    for k, v in card.items():
        if isinstance(v, (str, int, float, bool)):
            out[str(k)] = str(v)
        elif isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v):
            out[str(k)] = ",".join(str(x) for x in v)
    return out


def compile_name_regex(pattern: str | None) -> re.Pattern | None:
    """Compile the user's model-name regex; it must have at least one named group.

    Raises
    ------
    OptionError
        If it does not compile or has no named group.
    """
    if not pattern:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise OptionError(f"name regex {pattern!r} does not compile ({exc})") from None
    if not rx.groupindex:
        raise OptionError(f"name regex {pattern!r} has no named group such as (?P<seed>\\d+)")
    return rx


def regex_labels(rx: re.Pattern | None, name: str) -> dict[str, str]:
    """Named groups of the first match of ``rx`` in ``name`` (no match: no labels)."""
    if rx is None:
        return {}
    m = rx.search(name)
    return {k: v for k, v in m.groupdict().items() if v is not None} if m else {}


def read_sidecar(folder: str | Path) -> dict[str, dict[str, object]]:
    """Labels per model name from ``folder/metadata.csv`` (empty if there is none).

    Raises
    ------
    InputError
        If the CSV cannot be parsed or has no ``name`` column.
    """
    path = Path(folder) / SIDECAR
    if not path.exists():
        return {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot be parsed as CSV ({exc})") from None
    if "name" not in df.columns:
        raise InputError(f"{path}: has no 'name' column to match models by")
    return {str(r["name"]): {k: v for k, v in r.items() if k != "name"} for r in df.to_dict("records")}
