"""A merged model written out: dense groups as safetensors, LoRA groups as one PEFT adapter.

* Dense: ``OUT/merged.safetensors`` with ``<group>.weight`` (the merged weight: base + tau) and,
  where merged, ``<group>.bias``, in float32 under canonical names.
* LoRA: ``OUT/`` is a PEFT adapter folder.  Each merged update is written as exact factors
  (the subspace rule's own B^, A^; the other rules' dense update by its SVD above 1e-10 of its
  largest singular value), each module with its own rank and alpha = rank (scale 1) through
  PEFT's ``rank_pattern`` / ``alpha_pattern``; ``target_modules`` lists exactly the merged
  modules; the rest of the configuration is the first merged adapter's.  ``PeftModel.from_pretrained``
  loads it.
* Both: ``OUT/merge.json`` (the ``subspace-explorer/merge/1`` summary).  The folder is written
  atomically.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from explorer.apply.merge import Merged, numerical_factors
from explorer.core.atomic import atomic_folder
from explorer.core.errors import OptionError
from explorer.sources.family import Family
from explorer.sources.peft import ADAPTER_CONFIG

WEIGHTS_NAME = "adapter_model.safetensors"
DENSE_NAME = "merged.safetensors"
PEFT_PREFIX = "base_model.model."


def _adapter_config(family: Family, merged: Merged, ranks: dict[str, int]) -> dict[str, Any]:
    first = next(m for m in family.models if m.name == merged.models[0])
    cfg = json.loads((Path(first.files[0]).parent / ADAPTER_CONFIG).read_text())
    r = max(ranks.values())
    # PEFT reads the pattern keys as regular expressions matched at the end of module names.
    cfg.update({"r": r, "lora_alpha": r, "rank_pattern": {re.escape(k): v for k, v in ranks.items()},
                "alpha_pattern": {re.escape(k): float(v) for k, v in ranks.items()},
                "target_modules": sorted(ranks), "use_rslora": False, "use_dora": False, "lora_dropout": 0.0,
                "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None})
    return cfg


def write_merged(merged: Merged, family: Family, out: str | Path, summary: dict[str, Any] | None = None) -> Path:
    """Write ``merged`` into the folder ``out`` (created, or replaced whole); return it.

    Raises
    ------
    OptionError
        LoRA and dense groups in one merge (a PEFT adapter cannot hold dense weights), or LoRA
        adapters without ``adapter_config.json``.
    """
    kinds = {g.group.kind for g in merged.groups}
    if len(kinds) > 1:
        raise OptionError("a merge of LoRA and dense groups cannot be written as one file; merge them separately")
    out = Path(out)
    doc = json.dumps(summary or merged.to_json(), indent=2, allow_nan=False) + "\n"
    with atomic_folder(out) as tmp:
        if kinds == {"dense"}:
            tensors: dict[str, torch.Tensor] = {}
            for g in merged.groups:
                tensors[f"{g.group.name}.weight"] = g.weight.float().contiguous()
                b = g.merged_bias()
                if b is not None:
                    tensors[f"{g.group.name}.bias"] = b.float().contiguous()
            save_file(tensors, str(tmp / DENSE_NAME), metadata={"format": "pt", "method": merged.options.method})
        else:
            by = {m.name: m for m in family.models}
            if any(by[n].adapter is None for n in merged.models):
                raise OptionError(f"the merged adapters need their {ADAPTER_CONFIG} to be written as a PEFT adapter")
            tensors, ranks = {}, {}
            for g in merged.groups:
                a, b = g.factors if g.factors is not None else numerical_factors(g.tau)
                ranks[g.group.name] = int(a.shape[0])
                tensors[f"{PEFT_PREFIX}{g.group.name}.lora_A.weight"] = a.float().contiguous()
                tensors[f"{PEFT_PREFIX}{g.group.name}.lora_B.weight"] = b.float().contiguous()
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            cfg = _adapter_config(family, merged, ranks)
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        (tmp / "merge.json").write_text(doc)
    return out
