"""Writing and reading LoRA adapters in PEFT's on-disk layout, without importing PEFT.

An adapter is a folder holding ``adapter_config.json`` and ``adapter_model.safetensors``; tensors
are named ``base_model.model.<module>.lora_A.weight`` (r x in) and ``...lora_B.weight``
(out x r), exactly as ``PeftModel.save_pretrained`` names them, so that
``PeftModel.from_pretrained(base_module, folder)`` loads them.  PEFT itself is not imported at
build time because importing it costs several seconds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from explorer.core.errors import InputError

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def lora_key(module: str, part: str) -> str:
    """PEFT's saved name of factor ``part`` ("A" or "B") of ``module``."""
    return f"{PEFT_PREFIX}{module}.lora_{part}.weight"


def adapter_config(
    r: int,
    alpha: float,
    target_modules: Sequence[str],
    modules_to_save: Sequence[str] | None = None,
    base_model: str | None = None,
) -> dict:
    """The ``adapter_config.json`` content PEFT writes for a plain LoRA (no dropout, no bias)."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "r": int(r),
        "lora_alpha": alpha,
        "target_modules": sorted(target_modules),
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def write_adapter(
    folder: Path,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    r: int,
    alpha: float,
    extra: Mapping[str, torch.Tensor] | None = None,
    modules_to_save: Sequence[str] | None = None,
    base_model: str | None = None,
) -> None:
    """Write one adapter folder.

    Parameters
    ----------
    folder : Path
        Created if missing.
    factors : dict module -> (A (r, in), B (out, r))
    r : int
    alpha : float
        ``lora_alpha``; PEFT scales ΔW = (alpha / r) B A.
    extra : dict name -> Tensor, optional
        Further tensors under their full saved names (e.g. a ``modules_to_save`` head).
    modules_to_save : list of str, optional
    base_model : str, optional
        ``base_model_name_or_path``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for module, (a, b) in factors.items():
        tensors[lora_key(module, "A")] = a.contiguous()
        tensors[lora_key(module, "B")] = b.contiguous()
    for name, t in (extra or {}).items():
        tensors[name] = t.contiguous()
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = adapter_config(r, alpha, list(factors), modules_to_save, base_model)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config dict, tensors by saved name)`` of an adapter folder written by :func:`write_adapter`."""
    try:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        tensors = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: is not a readable PEFT adapter ({exc})") from None
    return cfg, tensors


def factors_of(cfg: dict, tensors: Mapping[str, torch.Tensor], module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(A (r, in), B (out, r), s = alpha / r)`` of ``module`` in a loaded adapter."""
    try:
        a, b = tensors[lora_key(module, "A")], tensors[lora_key(module, "B")]
    except KeyError:
        raise InputError(f"adapter has no LoRA factors for module {module!r}") from None
    return a.float(), b.float(), float(cfg["lora_alpha"]) / int(cfg["r"])
