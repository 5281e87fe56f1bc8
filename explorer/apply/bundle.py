"""The compact bundle: shared bases and coefficients as .safetensors, plus a manifest.

A bundle folder holds

* ``basis.safetensors``: per (group, view) ``{layer}::{view}::basis`` (U_k, d x k) and, when the
  analysis centred, ``{layer}::{view}::centre`` (Z, d x e);
* ``coefficients.safetensors``: ``{layer}::{view}::{i}`` (C_i, k x e_i) for model number i;
* ``manifest.json`` (schema ``subspace-explorer/bundle/1``): the models, each entry's layer,
  view, mode, centring, k, side and keys, and the compression summary (bytes, errors).

Its tensors hold exactly the numbers :meth:`CompressedView.numbers_after` counts, so the bytes
the summary reports are the bytes of tensor data in the two files.  :func:`read_bundle` loads a
bundle back and rebuilds any model's matrix; it refuses a damaged or foreign folder with one
line naming the file and what is wrong.  Writing is atomic: the folder appears complete or not
at all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from explorer.apply.compression import Compression
from explorer.apply.compress import store_dtype
from explorer.core.atomic import atomic_folder
from explorer.core.errors import InputError, OptionError

BUNDLE_SCHEMA = "subspace-explorer/bundle/1"
MANIFEST = "manifest.json"
BASIS_FILE = "basis.safetensors"
COEF_FILE = "coefficients.safetensors"


def _key(layer: str, view: str, what: str | int) -> str:
    return f"{layer}::{view}::{what}"


def write_bundle(comp: Compression, out: str | Path) -> Path:
    """Write ``comp`` as a bundle folder ``out`` (created, or replaced whole); return it."""
    out = Path(out)
    dt = store_dtype(comp.dtype)
    basis: dict[str, torch.Tensor] = {}
    coefs: dict[str, torch.Tensor] = {}
    entries = []
    index = {n: i for i, n in enumerate(comp.models)}
    for e in comp.entries:
        b = e.basis
        basis[_key(e.layer, e.view, "basis")] = torch.from_numpy(b.basis[:, : e.k].copy()).to(dt)
        if b.centre is not None:
            basis[_key(e.layer, e.view, "centre")] = torch.from_numpy(b.centre.copy()).to(dt)
        for name, c in zip(e.names, e.coefficients):
            coefs[_key(e.layer, e.view, index[name])] = c.to(dt).contiguous()
        entries.append({"layer": e.layer, "view": e.view, "mode": b.mode, "center": b.center, "k": e.k,
                        "side": b.side, "shape": list(b.group.shape), "models": [index[n] for n in e.names],
                        "centred": b.centre is not None})
    manifest = {"schema": BUNDLE_SCHEMA, "family": comp.family, "source": comp.source, "dtype": comp.dtype,
                "models": list(comp.models), "entries": entries, "summary": comp.to_json()}
    with atomic_folder(out) as tmp:
        save_file(basis, str(tmp / BASIS_FILE), metadata={"format": "pt", "schema": BUNDLE_SCHEMA})
        save_file(coefs, str(tmp / COEF_FILE), metadata={"format": "pt", "schema": BUNDLE_SCHEMA})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return out


@dataclass(eq=False)
class Bundle:
    """A bundle read back: its manifest and tensors."""

    folder: Path
    manifest: dict[str, Any]
    basis: dict[str, torch.Tensor]
    coefficients: dict[str, torch.Tensor]

    @property
    def models(self) -> list[str]:
        return list(self.manifest["models"])

    def _entry(self, layer: str, view: str) -> dict[str, Any]:
        for e in self.manifest["entries"]:
            if e["layer"] == layer and e["view"] == view:
                return e
        have = ", ".join(f"{e['layer']} {e['view']}" for e in self.manifest["entries"])
        raise OptionError(f"{self.folder}: holds no {layer} view {view} (it holds {have})")

    def rebuild(self, model: str, layer: str, view: str) -> torch.Tensor:
        """The model's matrix in ``view`` rebuilt from the bundle (float64, view orientation)."""
        e = self._entry(layer, view)
        if model not in self.models:
            raise OptionError(f"{self.folder}: has no model {model!r}")
        i = self.models.index(model)
        if i not in e["models"]:
            raise OptionError(f"{self.folder}: model {model!r} was left out of {layer} view {view}")
        u = self.basis[_key(layer, view, "basis")].double()
        x = u @ self.coefficients[_key(layer, view, i)].double()
        if e["centred"]:
            x = x + self.basis[_key(layer, view, "centre")].double()
        return x if e["mode"] == "out" else x.T

    def data_bytes(self) -> int:
        """Bytes of tensor data held (what the summary's ``bytes_after`` counts)."""
        return sum(t.numel() * t.element_size() for d in (self.basis, self.coefficients) for t in d.values())


def read_bundle(folder: str | Path) -> Bundle:
    """Load a bundle folder written by :func:`write_bundle`.

    Raises
    ------
    InputError
        A missing or unreadable file, another schema, or a tensor the manifest names but the
        files lack (the message names the file and the key).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: is not a readable bundle manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA:
        raise InputError(f"{path}: schema is {manifest.get('schema') if isinstance(manifest, dict) else None!r}, "
                         f"not {BUNDLE_SCHEMA}")
    tensors = []
    for name in (BASIS_FILE, COEF_FILE):
        try:
            tensors.append(load_file(str(folder / name)))
        except (OSError, SafetensorError, ValueError) as exc:
            raise InputError(f"{folder / name}: is not a readable safetensors file ({exc})") from None
    basis, coefs = tensors
    for e in manifest.get("entries", []):
        want = [(BASIS_FILE, basis, _key(e["layer"], e["view"], "basis"))]
        if e.get("centred"):
            want.append((BASIS_FILE, basis, _key(e["layer"], e["view"], "centre")))
        want += [(COEF_FILE, coefs, _key(e["layer"], e["view"], i)) for i in e["models"]]
        for fname, held, key in want:
            if key not in held:
                raise InputError(f"{folder / fname}: tensor {key!r} named by the manifest is missing")
    return Bundle(folder, manifest, basis, coefs)
