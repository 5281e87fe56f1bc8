"""Where on-disk state lives: the cache root (results, built-in zoo, uploads) and the Hub cache."""
from __future__ import annotations

import os
from pathlib import Path

# The folder that holds the ``explorer`` package: the repository root in a checkout,
# ``site-packages`` in an installed copy.
REPO_ROOT = Path(__file__).resolve().parents[2]


def running_from_checkout(root: Path = REPO_ROOT) -> bool:
    """Whether ``explorer`` is imported from a source checkout (not from an installed copy)."""
    if root.name in ("site-packages", "dist-packages"):
        return False
    return (root / "pyproject.toml").is_file() or (root / ".git").exists()


def user_cache_dir() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/subspace-explorer``, else ``~/.cache/subspace-explorer``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return base / "subspace-explorer"


def cache_root() -> Path:
    """The cache root, read now: ``$EXPLORER_CACHE_DIR`` if set; else ``cache/`` in the repository
    when running from a checkout; else the user cache folder (:func:`user_cache_dir`), so that an
    installed copy never writes inside ``site-packages``."""
    env = os.environ.get("EXPLORER_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if running_from_checkout():
        return REPO_ROOT / "cache"
    return user_cache_dir()


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
