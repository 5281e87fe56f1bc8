"""The export bar at the foot of every page: figures, tables, basis and manifest downloads."""
from __future__ import annotations

from functools import partial
from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import explorer
from explorer.core.errors import ExplorerError
from explorer.outputs.export import basis_safetensors, figure_html, table_csv
from explorer.sources.manifest import manifest_dict, manifest_yaml
from ui.families import load_family

_COLUMNS = 4


def export_bar(name: str, figures: dict[str, go.Figure] | None = None, tables: dict[str, pd.DataFrame] | None = None,
               res: explorer.Analysis | None = None) -> None:
    """Download buttons for a page: figures (HTML), tables (CSV), basis + coordinates, manifest.

    PNG export is the chart toolbar's camera button.

    Parameters
    ----------
    name : str
        Page name: the stem of every file name and part of every button key.
    figures, tables : dict label -> Figure / DataFrame, optional
    res : Analysis, optional
        Adds its basis and coordinates (safetensors) and its family's manifest (YAML).
    """
    with st.expander("Export"):
        # Each file is made when its button is clicked (Streamlit's deferred data), not on every run:
        # a figure's HTML embeds plotly.js (4.6 MB) and a 500-member manifest took 0.6 s to dump.
        buttons: list[tuple[str, Callable[[], bytes | str], str, str, str]] = []
        for label, fig in (figures or {}).items():
            buttons.append((f"{label} (HTML)", partial(figure_html, fig), f"{name}-{label}.html", "text/html",
                            f"dl_fig_{name}_{label}"))
        for label, df in (tables or {}).items():
            buttons.append((f"{label} (CSV)", partial(table_csv, df), f"{name}-{label}.csv", "text/csv",
                            f"dl_tab_{name}_{label}"))
        if res is not None:
            buttons.append(("basis + coordinates (safetensors)", partial(basis_safetensors, res),
                            f"{name}-{res.group.name}-{res.spectrum.mode}.safetensors", "application/octet-stream",
                            f"dl_basis_{name}"))
            manifest = family_manifest(res.source)
            if manifest is not None:
                buttons.append(("family manifest (YAML)", partial(manifest_yaml, manifest), "family.yaml",
                                "application/yaml", f"dl_manifest_{name}"))
        cols = st.columns(_COLUMNS)
        for i, (label, data, file_name, mime, key) in enumerate(buttons):
            # No rerun on a download: the page stays as it is, and the other buttons' deferred files with it.
            cols[i % _COLUMNS].download_button(label, data, file_name, mime, key=key, on_click="ignore")
        st.caption("PNG: use the camera button in each chart's toolbar.")


def family_manifest(source: str) -> dict | None:
    """The manifest (as a dict) that reloads the family of ``source``, or None if it has none."""
    try:
        return manifest_dict(load_family(source))
    except ExplorerError:
        return None


def manifest_text(source: str) -> str | None:
    """The YAML manifest that reloads the family of ``source``, or None if it has none."""
    manifest = family_manifest(source)
    return None if manifest is None else manifest_yaml(manifest)
