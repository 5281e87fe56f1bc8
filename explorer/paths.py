"""Where on-disk state lives: the cache root (results, built-in zoo)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """The cache root: ``$EXPLORER_CACHE_DIR`` if set, else ``cache/`` in the project."""
    env = os.environ.get("EXPLORER_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "cache"


def zoo_root() -> Path:
    """Folder of the built-in zoo's families (``<cache root>/zoo``)."""
    return cache_root() / "zoo"
