"""Test helpers shared by every test module (importable as ``tests.helpers``)."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file


def decode_plotly(obj: Any) -> Any:
    """Recursively turn Plotly typed arrays ``{"dtype": "f8", "bdata": "..."}`` into numpy arrays.

    Plotly 6+/7 sends numpy data base64-encoded; assertions want plain arrays.
    """
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            shape = obj.get("shape")
            if shape:
                dims = [int(s) for s in str(shape).replace("(", "").replace(")", "").split(",") if s.strip()]
                arr = arr.reshape(dims)
            return arr
        return {k: decode_plotly(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_plotly(v) for v in obj]
    return obj


def figure_json(element) -> dict:
    """The decoded figure dict of an AppTest ``plotly_chart`` element (its ``proto.spec``)."""
    return decode_plotly(json.loads(element.proto.spec))


def trace(fig: dict, name: str) -> dict:
    """The first trace of a decoded figure whose ``name`` is ``name``."""
    for t in fig["data"]:
        if t.get("name") == name:
            return t
    raise KeyError(f"no trace named {name!r}; have {[t.get('name') for t in fig['data']]}")


def write_family(
    folder: Path,
    matrices: Mapping[str, np.ndarray],
    labels: Mapping[str, Mapping[str, object]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny family: one safetensors file per model, plus an optional metadata.csv.

    Parameters
    ----------
    folder : Path
        Created if missing.
    matrices : mapping model name -> {tensor name: array} or -> array
        A bare array is stored as ``layers.0.weight``.
    labels : mapping model name -> {column: value}, optional
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensors in matrices.items():
        if isinstance(tensors, np.ndarray):
            tensors = {"layers.0.weight": tensors}
        save_file({k: torch.as_tensor(np.asarray(v)).to(dtype).contiguous() for k, v in tensors.items()},
                  str(folder / f"{name}.safetensors"))
    if labels:
        pd.DataFrame([{"name": k, **v} for k, v in labels.items()]).to_csv(folder / "metadata.csv", index=False)
    return folder
