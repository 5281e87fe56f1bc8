"""PEFT LoRA adapters: ``adapter_config.json`` and the per-module scale s = alpha / r.

PEFT scales the update of module ``m`` by ``alpha_m / r_m`` (``alpha_m / sqrt(r_m)`` with
``use_rslora``), where ``r_m`` and ``alpha_m`` come from ``rank_pattern`` / ``alpha_pattern`` when
a pattern matches the module name, else from ``r`` / ``lora_alpha``.  Patterns match the way
:func:`peft.utils.other.get_pattern_key` matches them: ``re.match(rf"(.*\\.)?({key})$", module)``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from explorer.core.errors import InputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class LoraConfig:
    """The parts of a PEFT ``adapter_config.json`` that fix each module's scale.

    Attributes
    ----------
    r : int
    alpha : float
        ``lora_alpha``.
    use_rslora : bool
    rank_pattern, alpha_pattern : tuple of (str, number)
        PEFT's per-module overrides, in the file's order (first match wins, as in PEFT).
    use_dora : bool
        DoRA adapters are not a plain ``s B A`` update; the dW view refuses them.
    """

    r: int
    alpha: float
    use_rslora: bool = False
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    use_dora: bool = False

    @staticmethod
    def _match(patterns: tuple[tuple[str, float], ...], module: str) -> float | None:
        for key, value in patterns:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return None

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """``(r, alpha)`` PEFT uses for ``module`` (canonical module path)."""
        r = self._match(self.rank_pattern, module)
        a = self._match(self.alpha_pattern, module)
        return (int(r) if r is not None else self.r), (float(a) if a is not None else self.alpha)

    def scale(self, module: str) -> float:
        """The factor s of ΔW = s B A for ``module``."""
        r, alpha = self.rank_alpha(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def read_adapter_config(path: str | Path) -> tuple[LoraConfig, dict[str, str]]:
    """Parse ``adapter_config.json`` into a :class:`LoraConfig` and metadata labels.

    Labels are ``peft_type``, ``base_model`` (``base_model_name_or_path``), ``r``, ``lora_alpha``,
    ``use_rslora``, ``target_modules``, ``task_type`` when present.

    Raises
    ------
    InputError
        If the file is not JSON, is not a LoRA config, or has a non-positive ``r``.
    """
    path = Path(path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot be parsed as JSON ({exc.__class__.__name__})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: is not a JSON object")
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise InputError(f"{path}: peft_type {ptype} is not supported (only LORA adapters)")
    try:
        r = int(cfg.get("r", 8))
        alpha = float(cfg.get("lora_alpha", r))
        rank_pattern = tuple((str(k), int(v)) for k, v in (cfg.get("rank_pattern") or {}).items())
        alpha_pattern = tuple((str(k), float(v)) for k, v in (cfg.get("alpha_pattern") or {}).items())
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"{path}: r, lora_alpha, rank_pattern or alpha_pattern is malformed") from None
    if r <= 0 or any(v <= 0 for _, v in rank_pattern):
        raise InputError(f"{path}: LoRA rank r must be positive")
    config = LoraConfig(
        r=r, alpha=alpha, use_rslora=bool(cfg.get("use_rslora", False)),
        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, use_dora=bool(cfg.get("use_dora", False)),
    )
    labels: dict[str, str] = {"peft_type": ptype, "r": str(r), "lora_alpha": f"{alpha:g}"}
    if config.use_rslora:
        labels["use_rslora"] = "true"
    if cfg.get("base_model_name_or_path"):
        labels["base_model"] = str(cfg["base_model_name_or_path"])
    if cfg.get("task_type"):
        labels["task_type"] = str(cfg["task_type"])
    targets = cfg.get("target_modules")
    if isinstance(targets, (list, tuple)):
        labels["target_modules"] = ",".join(sorted(str(t) for t in targets))
    elif targets:
        labels["target_modules"] = str(targets)
    return config, labels
