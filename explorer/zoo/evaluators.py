"""Which evaluator a zoo family has: :func:`evaluator_for` (one cached instance per built folder).

Evaluators themselves live in :mod:`explorer.zoo.evaluate` (digits) and
:mod:`explorer.zoo.minilm_eval` (MiniLM); this module only picks one by family name.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from explorer.core.errors import InputError
from explorer.zoo.evaluate import (
    DENSE_FAMILIES,
    LORA_FAMILIES,
    DenseEvaluator,
    Evaluator,
    LoraEvaluator,
)
from explorer.zoo.minilm_eval import MiniLMEvaluator
from explorer.zoo.registry import ensure_built


def _zoo_name(name: str) -> str:
    return name[4:] if name.startswith("zoo:") else name


def evaluator_for(name: str, folder: str | Path | None = None) -> Evaluator | None:
    """The evaluator of a zoo family, or ``None`` if the family has none.

    Parameters
    ----------
    name : str
        ``zoo:NAME`` or ``NAME`` (``digits-lora``...), or any SOURCE string (then ``None``
        unless ``folder`` is a zoo family folder).
    folder : path, optional
        The family folder; default: the zoo's folder for ``name``, built first if needed.
        A folder with a ``recipe.json`` naming a digits family gets that family's evaluator.
    """
    if folder is None and not name.startswith("zoo:") and (Path(name).expanduser() / "recipe.json").is_file():
        folder = Path(name).expanduser()  # a zoo family opened by its folder path
    if folder is not None:
        stamp = Path(folder) / "recipe.json"
        try:
            name = json.loads(stamp.read_text()).get("name", _zoo_name(name))
        except (OSError, ValueError):
            name = _zoo_name(name)
    else:
        name = _zoo_name(name)
    if name not in DENSE_FAMILIES + LORA_FAMILIES + ("minilm-lora",):
        return None
    if folder is None:
        folder = ensure_built(name)
    return _cached(name, str(Path(folder).resolve()), _stamp(Path(folder)))


def _stamp(folder: Path) -> float:
    try:
        return (folder / "metadata.csv").stat().st_mtime
    except OSError:
        raise InputError(f"{folder}: is not a built zoo family (no metadata.csv)") from None


@lru_cache(maxsize=8)
def _cached(name: str, folder: str, stamp: float) -> Evaluator:
    # Keyed by the metadata's mtime too: a rebuilt family gets a fresh evaluator.
    if name == "minilm-lora":
        return MiniLMEvaluator(Path(folder), name)
    cls = LoraEvaluator if name in LORA_FAMILIES else DenseEvaluator
    return cls(Path(folder), name)
