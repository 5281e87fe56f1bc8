"""Where on-disk state lives: the cache root (results, built-in zoo, uploads) and the Hub cache."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    """The cache root: ``$EXPLORER_CACHE_DIR`` if set, else ``cache/`` in the project."""
    env = os.environ.get("EXPLORER_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "cache"


def zoo_root() -> Path:
    """Folder of the built-in zoo's families (``<cache root>/zoo``)."""
    return cache_root() / "zoo"


def hub_cache() -> Path:
    """The HF hub cache folder (``$HF_HUB_CACHE``, else huggingface_hub's default), read now."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)
