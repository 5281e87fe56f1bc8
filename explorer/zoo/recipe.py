"""What a zoo recipe is: a name, a version and a function that writes a family folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from explorer.core.progress import ProgressFn


@dataclass(frozen=True)
class ZooRecipe:
    """How to build one zoo family.

    Attributes
    ----------
    name : str
    version : str
        Bump it whenever the recipe's output changes; built copies with another version are rebuilt.
    description : str
    build : callable(folder: Path, progress) -> None
        Writes ``models/`` and ``metadata.csv`` into ``folder``.
    default : bool
        Built by ``zoo build`` with no names (and by the quick start).
    expected_seconds : float or None
        Typical build time on the reference 2-core machine, to announce before a long build.
    """

    name: str
    version: str
    description: str
    build: Callable[[Path, ProgressFn | None], None]
    default: bool = True
    expected_seconds: float | None = None
