"""Downloads every page offers: figures as HTML, tables as CSV, basis and coordinates as safetensors,
folders (bundles, adapters, merges) as zip archives."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors.torch import save

from explorer.pipeline.result import Analysis


def figure_html(fig: go.Figure) -> bytes:
    """A self-contained HTML file of one figure (plotly.js embedded: opens with no network)."""
    return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")


def table_csv(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")


def basis_tensors(res: Analysis) -> dict[str, torch.Tensor]:
    """The arrays a user takes away from an analysis.

    Returns
    -------
    dict of str -> Tensor
        ``eigenvalues`` (d,), ``basis`` (d, k) of the analysed mode, and when computed
        ``other_basis`` (e, k2), ``coords`` (N, k*k), ``scores`` (N, k), ``energy_one`` (N, K).
    """
    out = {"eigenvalues": res.spectrum.eigenvalues, "basis": res.spectrum.basis}
    m = res.metrics
    if m is not None:
        for name in ("other_basis", "coords", "scores", "energy_one", "energy_two"):
            a = getattr(m, name, None)
            if a is not None:
                out[name] = a
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in out.items()}


def basis_safetensors(res: Analysis) -> bytes:
    """:func:`basis_tensors` as a safetensors file; its metadata records what produced it."""
    meta = {
        "family": res.family, "source": res.source, "layer": res.group.name, "view": res.view,
        "mode": res.spectrum.mode, "center": res.spectrum.center, "models": json.dumps(res.models),
        "engine_version": str(res.engine_version),
    }
    return save(basis_tensors(res), metadata=meta)


def zip_folder(folder: str | Path) -> bytes:
    """Every file under ``folder`` as a zip archive (paths relative to the folder's parent, so it
    unpacks into a folder of the same name): the Apply page's bundle, adapters and merges."""
    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder.parent).as_posix())
    return buf.getvalue()
