"""Registry of zoo recipes, and building them into ``cache/zoo/NAME`` atomically.

A recipe writes a family folder (``models/*.safetensors`` + ``metadata.csv``) into a temporary
directory; only when it finished is the folder renamed into place with a ``recipe.json`` stamp.
A family is rebuilt only when its recipe version changes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from explorer.core.errors import InputError
from explorer.core.paths import zoo_root
from explorer.core.progress import ProgressFn
from explorer.zoo import digits, minilm, planted
from explorer.zoo.recipe import ZooRecipe

# The built-in recipes, a plain list in the order ``zoo build`` and the app list them.
RECIPES: dict[str, ZooRecipe] = {rc.name: rc for rc in (*digits.RECIPES, *minilm.RECIPES, *planted.RECIPES)}


def list_recipes() -> list[ZooRecipe]:
    return list(RECIPES.values())


def get_recipe(name: str) -> ZooRecipe:
    if name not in RECIPES:
        raise InputError(f"zoo:{name} is not a zoo family; available: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def family_dir(name: str) -> Path:
    return zoo_root() / name


def is_built(name: str) -> bool:
    """True if ``zoo:name`` is built with the current recipe version."""
    recipe = get_recipe(name)
    stamp = family_dir(name) / "recipe.json"
    try:
        return json.loads(stamp.read_text()).get("version") == recipe.version
    except (OSError, ValueError):
        return False


def build(name: str, force: bool = False, progress: ProgressFn | None = None) -> Path:
    """Build ``zoo:name`` (unless already built with this recipe version) and return its folder."""
    recipe = get_recipe(name)
    target = family_dir(name)
    if not force and is_built(name):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        recipe.build(tmp, progress)
        (tmp / "recipe.json").write_text(json.dumps({"name": name, "version": recipe.version}))
        old = target.parent / f".{name}-old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_built(name: str, progress: ProgressFn | None = None) -> Path:
    """Return the folder of ``zoo:name``, building it first if it is missing or outdated."""
    return build(name, force=False, progress=progress)
