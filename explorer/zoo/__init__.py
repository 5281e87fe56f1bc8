"""The built-in zoo: deterministic families built here in seconds, used offline by default."""
from explorer.zoo.registry import (
    RECIPES,
    ZooRecipe,
    build,
    ensure_built,
    is_built,
    list_recipes,
)

__all__ = ["RECIPES", "ZooRecipe", "build", "ensure_built", "is_built", "list_recipes"]
