"""The compressed family written back as ordinary PEFT adapter folders.

Each adapter of the family becomes ``OUT/<name>/`` holding its own ``adapter_config.json``
(copied byte for byte) and an ``adapter_model.safetensors`` with every tensor of the original
under its original name and dtype, the compressed groups' factors replaced by their
reconstructions A^_i, B^_i (cast to the stored dtype).  ``peft.PeftModel.from_pretrained(base,
OUT/<name>)`` loads it like the original.  An adapter left out of any compressed group (NaN/Inf
data) is not written; the summary's ``skipped`` names it.  The output folder is written
atomically: complete or not at all.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from explorer.apply.compression import Compression
from explorer.core.atomic import atomic_folder
from explorer.core.errors import OptionError
from explorer.sources.family import Family
from explorer.sources.peft import ADAPTER_CONFIG
from explorer.sources.readers import load_tensor

WEIGHTS_NAME = "adapter_model.safetensors"


def folder_name(model: str) -> str:
    """A model's folder under the output: its name, path separators and odd characters replaced."""
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", model).strip("._") or "model"
    return safe


def exported_models(comp: Compression) -> list[str]:
    """The models present in every compressed (group, view): the ones that can be written whole."""
    names = set(comp.models)
    for e in comp.entries:
        names &= set(e.names)
    return [n for n in comp.models if n in names]


def write_peft_adapters(comp: Compression, family: Family, out: str | Path) -> list[Path]:
    """Write every exportable adapter of ``comp`` under ``out``; return their folders.

    Raises
    ------
    OptionError
        An entry that is not a LoRA factor view (dense groups: use the bundle), or a model
        without ``adapter_config.json``.
    """
    dense = [e for e in comp.entries if e.view not in ("A", "B")]
    if dense:
        raise OptionError(f"--format peft writes LoRA adapters, and {dense[0].layer} view {dense[0].view} is not a "
                          "LoRA factor; use --format bundle")
    by_name = {m.name: m for m in family.models}
    names = exported_models(comp)
    for n in names:
        if by_name[n].adapter is None:
            raise OptionError(f"model {n!r}: has no {ADAPTER_CONFIG}, so it cannot be written as a PEFT adapter; "
                              "use --format bundle")
    seen: dict[str, str] = {}
    for n in names:
        f = folder_name(n)
        if f in seen:
            raise OptionError(f"models {seen[f]!r} and {n!r} would share the folder {f!r}")
        seen[f] = n
    folders = []
    out = Path(out)
    with atomic_folder(out) as tmp:
        for n in names:
            ref = by_name[n]
            replaced: dict[str, torch.Tensor] = {}
            for e in comp.entries:
                canonical = e.basis.group.tensor if e.view == "A" else e.basis.group.b_tensor
                replaced[canonical] = e.rebuild(e.names.index(n))
            tensors = {}
            for canonical, info in family.headers[n].items():
                path, stored = family.locate(ref, canonical)
                t = load_tensor(path, stored)
                if canonical in replaced:
                    new = replaced[canonical]
                    if tuple(new.shape) != tuple(t.shape):  # a bug, never bad input: the shapes are the file's
                        raise AssertionError(f"{n}: {canonical} rebuilt as {tuple(new.shape)}, stored {tuple(t.shape)}")
                    t = new.to(t.dtype)
                tensors[stored] = t.contiguous()
            folder = tmp / folder_name(n)
            folder.mkdir()
            save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
            shutil.copyfile(Path(ref.files[0]).parent / ADAPTER_CONFIG, folder / ADAPTER_CONFIG)
            folders.append(out / folder_name(n))
    return folders
