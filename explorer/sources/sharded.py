"""Sharded checkpoints: ``model.safetensors.index.json`` (or ``pytorch_model.bin.index.json``).

The index's ``weight_map`` names, for each tensor, the shard file that holds it.  A model is the
set of its shards; the index is also checked against the shards' headers, so that a missing
shard or a tensor missing from its shard is reported by name before any analysis.
"""
from __future__ import annotations

import json
from pathlib import Path

from explorer.core.errors import InputError
from explorer.sources import readers
from explorer.sources.policy import check_path_names

# Preferred first: safetensors shards are read header-only, torch shards must be unpickled.
_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def find_index(folder: Path) -> Path | None:
    """The index file of a sharded checkpoint in ``folder``, or ``None``."""
    for name in _INDEX_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors.index.json")) + sorted(folder.glob("*.bin.index.json"))
    return found[0] if found else None


def read_index(index: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """Shard paths (sorted, each checked to exist) and the ``{tensor: shard path}`` map.

    Raises
    ------
    InputError
        If the index is not JSON, has no ``weight_map``, or names a shard that is missing.
    """
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = {str(k): str(v) for k, v in data["weight_map"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise InputError(f"{index}: is not a checkpoint index (JSON with a 'weight_map')") from None
    if not weight_map:
        raise InputError(f"{index}: its weight_map is empty")
    for shard in set(weight_map.values()):
        # Shards sit next to their index; a path in the map must not reach anywhere else.
        if not shard or "/" in shard or "\\" in shard or shard in (".", ".."):
            shown = shard.encode("ascii", "backslashreplace").decode()
            raise InputError(f"{index}: shard {shown!r} is not a plain file name next to the index")
        check_path_names(index.parent / shard, "shard")
    paths = {v: str(index.parent / v) for v in set(weight_map.values())}
    for shard, p in sorted(paths.items()):
        if not Path(p).is_file():
            raise InputError(f"{index}: shard {shard!r} is missing")
    return tuple(sorted(paths.values())), {k: paths[v] for k, v in weight_map.items()}


def check_shards(index: Path, weight_map: dict[str, str]) -> None:
    """Check that every tensor the index lists is in its shard's header.

    Raises
    ------
    InputError
        Naming the first tensor that its shard lacks.
    """
    for name, shard in sorted(weight_map.items()):
        if name not in readers.read_header(shard):
            raise InputError(f"{index}: tensor {name!r} is missing from shard {Path(shard).name}")
