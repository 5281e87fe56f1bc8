"""Canonical tensor names, so that adapters, base models and checkpoints share group names.

PEFT writes ``base_model.model.<module>.lora_A.weight`` (older versions keep the adapter name,
``lora_A.default.weight``); kohya-style files write ``<module>.lora_down.weight`` /
``lora_up.weight``; a transformers base model writes ``<module>.weight``.  Mapping all of them
to one canonical spelling (``<module>.lora_A.weight``, ``<module>.lora_B.weight``,
``<module>.weight``) lets the catalog match a LoRA module of an adapter with the same module of
its base model.
"""
from __future__ import annotations

import re
from functools import lru_cache

# PEFT's wrapper prefix: the saved adapter nests the base model under `base_model.model.`.
_PEFT_PREFIX = "base_model.model."
# `lora_A.<adapter name>.weight` (PEFT in memory / old saves) -> `lora_A.weight`.
_ADAPTER_SEGMENT = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.[^.]+\.weight$")
# `modules_to_save.<adapter name>.` is PEFT's copy of a fully trained module.
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.[^.]+\.")
_KOHYA = {".lora_down.weight": ".lora_A.weight", ".lora_up.weight": ".lora_B.weight"}

LORA_A = ".lora_A.weight"
LORA_B = ".lora_B.weight"
LORA_ALPHA = ".alpha"


@lru_cache(maxsize=1 << 16)  # the same few hundred names recur in every adapter of a family
def canonical_name(raw: str) -> str:
    """Return the canonical spelling of a stored tensor name.

    Examples
    --------
    >>> canonical_name("base_model.model.layers.3.self_attn.q_proj.lora_A.weight")
    'layers.3.self_attn.q_proj.lora_A.weight'
    >>> canonical_name("unet.to_q.lora_up.weight")
    'unet.to_q.lora_B.weight'
    """
    name = raw[len(_PEFT_PREFIX):] if raw.startswith(_PEFT_PREFIX) else raw
    name = _ADAPTER_SEGMENT.sub(r".\1.weight", name)
    name = _MODULES_TO_SAVE.sub(".", name)
    for old, new in _KOHYA.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name


def lora_part(name: str) -> tuple[str, str] | None:
    """``(module, "A" | "B")`` for a canonical LoRA factor name, else ``None``."""
    if name.endswith(LORA_A):
        return name[: -len(LORA_A)], "A"
    if name.endswith(LORA_B):
        return name[: -len(LORA_B)], "B"
    return None


def is_lora_tensor(name: str) -> bool:
    """True for every tensor that belongs to a LoRA module (factors, alpha, DoRA magnitude)."""
    return lora_part(name) is not None or name.endswith(LORA_ALPHA) or ".lora_" in name


def module_of(name: str) -> str:
    """Module path of a canonical tensor name (``x.weight`` -> ``x``; LoRA factors -> their module)."""
    part = lora_part(name)
    if part is not None:
        return part[0]
    return name[: -len(".weight")] if name.endswith(".weight") else name
