"""Shared page scaffolding: sidebar pickers, state <-> URL query string, cached loaders, exports.

Every page starts with ``sel = ui.page_setup("Title")``.  A page opened cold by URL (a share
link, a reload on a restarted server) runs without app.py, so nothing here relies on another
page having run: state is initialised from the query string, then from defaults.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import explorer
from explorer.catalog.groups import (
    LayerGroup,
    build_catalog,
    layer_indices,
    select_groups,
)
from explorer.catalog.views import views_for
from explorer.core.errors import ExplorerError
from explorer.engine.options import CENTERS, MODES, SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.outputs.export import basis_safetensors, figure_html, table_csv
from explorer.pipeline.analyze import analyze_cached, cache_key
from explorer.pipeline.cache import ResultCache
from explorer.sources import policy as security
from explorer.zoo import registry

DEFAULTS: dict[str, str] = {
    "source": "zoo:digits-mlp-finetune",
    "layer": "layers.1",
    "view": "",
    "mode": "out",
    "center": "none",
    "tau": "0.9",
    "k": "8",
}
K_CHOICES = (2, 4, 8, 16, 32)
KINDS = ("Built-in zoo", "Local path", "Hugging Face Hub", "Upload")
MODE_LABELS = {"out": "out — output space (columns)", "in": "in — input space (rows)", "model": "model — N×N Gram"}
VIEW_HELP = ("full: weights as stored · delta: minus the base model · A / B: LoRA factors stacked as the "
             "paper does · dW: the LoRA update s·B·A, computed factored")
# (file, label, icon) of every page; the sidebar navigation is drawn here so labels are ours.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("app.py", "Home · tour", ":material/explore:"),
    ("pages/1_Spectrum.py", "Spectrum", ":material/bar_chart:"),
    ("pages/2_Overlap.py", "Overlap", ":material/join_inner:"),
    ("pages/3_Embedding.py", "Embedding", ":material/scatter_plot:"),
    ("pages/4_Generalization.py", "Generalization", ":material/target:"),
)
_MEMORY_ENTRIES = 48


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: small hashable values (the keys of every cached computation)."""

    source: str
    layer: str
    view: str
    mode: str
    center: str
    tau: float
    k: int = 8

    @property
    def options(self) -> SpectralOptions:
        return SpectralOptions(mode=self.mode, center=self.center)

    @property
    def metrics(self) -> MetricsOptions:
        """k sets the size of each model's own subspace (overlaps) and of its coordinate block."""
        return MetricsOptions(k_coord=self.k, k_angles=self.k)


# ----------------------------------------------------------------------------- cached loaders
@st.cache_resource(show_spinner=False, max_entries=16)
def load_family(source: str) -> explorer.Family:
    """The family for a SOURCE string, shared by all sessions (it holds no tensor data)."""
    return explorer.load_family(source)


@st.cache_data(show_spinner=False, max_entries=16)
def load_catalog(source: str) -> list[LayerGroup]:
    return build_catalog(load_family(source))


@st.cache_resource(show_spinner=False)
def _memory() -> OrderedDict:
    """In-process LRU of analyses by content key, shared by sessions (the disk cache is behind it)."""
    return OrderedDict()


def compute(sel: Selection, layer: str | None = None, metrics: MetricsOptions | None = None,
            source: str | None = None) -> explorer.Analysis:
    """The analysis of ``sel`` (or of another ``layer`` with the same options).

    Looks in memory, then in the disk cache (shared with the CLI and other sessions), and
    computes only on a miss, with a progress bar.  Raises ExplorerError for bad input.
    """
    layer = layer or sel.layer
    metrics = metrics or sel.metrics
    fam = load_family(source or sel.source)
    view = sel.view or None
    key = cache_key(fam, layer, view, sel.options, metrics)
    mem = _memory()
    if key in mem:
        mem.move_to_end(key)
        return mem[key]
    if ResultCache().path(key).exists():
        res = analyze_cached(fam, layer, view, sel.options, metrics)
    else:
        with st.status(f"Decomposing {layer} ({sel.mode}-mode)…", expanded=True) as status:
            bar = st.progress(0.0)

            def progress(done: int, total: int, label: str) -> None:
                bar.progress(min(done / max(total, 1), 1.0), text=f"{label}: {done}/{total}")

            res = analyze_cached(fam, layer, view, sel.options, metrics, progress=progress)
            status.update(label=f"{layer} decomposed", state="complete", expanded=False)
    mem[key] = res
    while len(mem) > _MEMORY_ENTRIES:
        mem.popitem(last=False)
    return res


def page_analysis(title: str, icon: str, heading: str) -> tuple[Selection, explorer.Analysis]:
    """The start of every view page: set-up, sidebar, heading, then the selection's analysis.

    Stops the page (after an ``st.error`` or an info line) when there is nothing to show.
    """
    sel = page_setup(title, icon)
    st.title(heading)
    if sel is None:
        st.stop()
    res = analysis(sel)
    if res is None:
        st.stop()
    return sel, res


def analysis(sel: Selection) -> explorer.Analysis | None:
    """:func:`compute` with errors shown as ``st.error`` (the page then stops drawing)."""
    try:
        return compute(sel)
    except ExplorerError as exc:
        st.error(str(exc))
        return None


def _ensure_zoo(source: str) -> None:
    """Build a zoo family on first use, showing progress, before the cached loader runs."""
    if not source.startswith("zoo:"):
        return
    name = source[4:]
    registry.get_recipe(name)
    if registry.is_built(name):
        return
    secs = registry.get_recipe(name).expected_seconds
    eta = f", about {max(1, round(secs / 60))} min" if secs else ""
    with st.status(f"Building {source} (first use only{eta})…", expanded=True) as status:
        bar = st.progress(0.0)

        def progress(done: int, total: int, label: str) -> None:
            bar.progress(min(done / max(total, 1), 1.0), text=f"{label}: {done}/{total}")

        registry.ensure_built(name, progress=progress)
        status.update(label=f"{source} built", state="complete", expanded=False)


# ----------------------------------------------------------------------------- state
def _init_state() -> None:
    """Fill ``sel_*`` session keys once per session: from the URL first, then defaults."""
    if st.session_state.get("_restored"):
        return
    qp = st.query_params
    for field, default in DEFAULTS.items():
        st.session_state[f"sel_{field}"] = qp.get(field, default)
    src = st.session_state["sel_source"]
    st.session_state["sel_kind"] = (KINDS[0] if src.startswith("zoo:") else KINDS[2] if src.startswith("hf:")
                                    else KINDS[1])
    st.session_state["sel_path"] = "" if src.startswith(("zoo:", "hf:")) else src
    st.session_state["sel_hub"] = src if src.startswith("hf:") else ""
    st.session_state["_restored"] = True


def _widget(field: str, make: Callable, **kwargs):
    """Draw a widget whose value survives page switches and comes from the URL on a cold start.

    Streamlit drops a widget's state when a page that does not draw it runs, so the value lives
    in ``sel_<field>``; the widget key is seeded from it before the widget is drawn, and an
    ``on_change`` callback (which runs before the rerun) copies the user's change back.
    """
    wkey, skey = f"w_{field}", f"sel_{field}"
    options = kwargs.get("options")
    if options is not None and st.session_state.get(skey) not in options:
        st.session_state[skey] = options[0]
    st.session_state[wkey] = st.session_state[skey]

    def sync() -> None:
        st.session_state[skey] = st.session_state[wkey]

    return make(key=wkey, on_change=sync, **kwargs)


def _zoo_sources() -> list[str]:
    """Default zoo families first, then the on-demand ones (built when picked)."""
    recipes = registry.list_recipes()
    return [f"zoo:{r.name}" for r in recipes if r.default] + [f"zoo:{r.name}" for r in recipes if not r.default]


def _zoo_label(source: str) -> str:
    r = registry.get_recipe(source[4:])
    if r.default or registry.is_built(r.name):
        return source
    secs = f", ~{max(1, round(r.expected_seconds / 60))} min" if r.expected_seconds else ""
    return f"{source} (built on demand{secs})"


# ----------------------------------------------------------------------------- sidebar
def _nav() -> None:
    for path, label, icon in PAGES:
        st.sidebar.page_link(path, label=label, icon=icon)
    st.sidebar.divider()


def _pick_source() -> str:
    """Source pickers; returns the SOURCE string ('' when none given yet)."""
    # Server mode (EXPLORER_SERVER_MODE=1) may turn off local paths outside its roots, Hub downloads, uploads.
    allowed = security.allowed_source_kinds()
    kinds = [label for label, kind in zip(KINDS, ("zoo", "local", "hub", "upload")) if kind in allowed]
    kind = _widget("kind", st.radio, label="Source", options=kinds, horizontal=True)
    if kind == KINDS[0]:
        zoo = _zoo_sources()
        if st.session_state["sel_source"] in zoo:
            st.session_state["sel_zoo"] = st.session_state["sel_source"]
        return _widget("zoo", st.selectbox, label="Built-in family", options=zoo, format_func=_zoo_label,
                       help="Families built here from scikit-learn's digits data, a planted synthetic one, "
                       "and LoRA adapters on MiniLM-L6 (on demand).")
    if kind == KINDS[1]:
        return _widget("path", st.text_input, label="Folder, weight file or manifest",
                       placeholder="/data/my-loras  or  family.yaml").strip()
    if kind == KINDS[2]:
        return _widget("hub", st.text_input, label="Hub repos", placeholder="hf:org/repo[,org/repo2] or hf:org/prefix*",
                       help=("server mode: only repos already in the local HF cache (or listed in "
                             "EXPLORER_HUB_ALLOW)" if security.server_mode() else
                             "Downloads only the needed files into the standard Hugging Face cache; "
                             "with HF_HUB_OFFLINE=1 it works from that cache.")).strip()
    files = st.file_uploader("Weight files, adapter folders as .zip, metadata.csv", accept_multiple_files=True,
                             key="w_upload")
    if files:
        sig = tuple((f.name, f.size) for f in files)
        if st.session_state.get("_upload_sig") != sig:
            from explorer.sources.upload import family_from_uploads

            try:
                fam = family_from_uploads([(f.name, f.getvalue()) for f in files])
            except ExplorerError as exc:
                st.error(str(exc))
                return ""
            st.session_state["_upload_sig"], st.session_state["_upload_source"] = sig, fam.source
        return st.session_state["_upload_source"]
    return st.session_state.get("_upload_source", "")


def _sidebar() -> Selection | None:
    sb = st.sidebar
    _nav()
    with sb:
        st.header("Family")
        source = _pick_source()
    if source != st.session_state["sel_source"]:
        st.session_state["sel_source"] = source
    if not source:
        sb.info("Choose a model family to analyse.")
        return None
    try:
        _ensure_zoo(source)
        fam = load_family(source)
        catalog = load_catalog(source)
    except ExplorerError as exc:
        st.error(str(exc))
        return None
    partial = [g for g in catalog if g.n_models < len(fam)]
    catalog = [g for g in catalog if g.n_models == len(fam)]
    sb.caption(f"{len(fam)} {fam.kind} models · {len(catalog)} layer groups")
    if partial:
        with sb.expander(f"{len(partial)} groups not held by every model"):
            for g in partial[:50]:
                st.caption(f"{g.name}: {g.n_models}/{len(fam)} models" +
                           (f" — {g.problems[0][0]}: {g.problems[0][1]}" if g.problems else ""))
    if not catalog:
        st.error(f"{source}: no layer group is held by all {len(fam)} models with one shape")
        return None
    if fam.skipped:
        with sb.expander(f"{len(fam.skipped)} members skipped"):
            for line in fam.skipped:
                st.warning(line)

    by_name = {g.name: g for g in catalog}
    types = sorted({g.module_type for g in catalog})
    layer_now = st.session_state["sel_layer"]
    if "sel_module_type" not in st.session_state or layer_now in by_name:
        # the layer (from the URL, or the one last picked) decides the module type
        st.session_state["sel_module_type"] = by_name[layer_now].module_type if layer_now in by_name else types[0]
    with sb:
        st.header("Layer group")
        mtype = _widget("module_type", st.selectbox, label="Module type", options=types)
        names = [g.name for g in catalog if g.module_type == mtype]
        indices = layer_indices(catalog, [mtype])
        if len(indices) > 1:
            lo, hi = _layer_range(indices)
            names = [g.name for g in select_groups(catalog, [mtype], (lo, hi))] or names
        layer = _widget("layer", st.selectbox, label="Layer", options=names,
                        format_func=lambda n: f"{n} ({'×'.join(map(str, by_name[n].shape))})")
        st.header("Decomposition")
        views = list(views_for(fam, by_name[layer]))
        view = _widget("view", st.selectbox, label="View", options=views, help=VIEW_HELP)
        mode = _widget("mode", st.radio, label="Mode", options=list(MODES), format_func=MODE_LABELS.get)
        center = _widget("center", st.selectbox, label="Centering", options=list(CENTERS),
                         help="none (default; gauge-invariant for LoRA) · model: subtract the mean model · "
                         "vector: subtract the mean column/row of the unfolding (EigenLoRAx/SHARE style)")
        tau_now = st.session_state["sel_tau"]
        st.session_state["sel_tau"] = round(min(max(_as_float(tau_now, 0.9), 0.5), 0.99), 2)
        tau = _widget("tau", st.slider, label="Threshold τ", min_value=0.5, max_value=0.99, step=0.01)
        k_now = _as_float(st.session_state["sel_k"], 8)
        st.session_state["sel_k"] = min(K_CHOICES, key=lambda c: abs(c - k_now))
        k = _widget("k", st.select_slider, label="k (own subspaces, coordinates)", options=list(K_CHOICES),
                    help="Dimension of each model's own subspace in the overlap views and of the coordinate "
                    "block C_i = U_kᵀ W_i V_k placed by the embedding.")
    sel = Selection(source, layer, view, mode, center, float(tau), int(k))
    st.query_params.from_dict({"source": sel.source, "layer": sel.layer, "view": sel.view, "mode": sel.mode,
                               "center": sel.center, "tau": f"{sel.tau:g}", "k": str(sel.k)})
    return sel


def _layer_range(indices: list[int]) -> tuple[int, int]:
    """Sidebar slider over the layer numbers of the chosen module type; kept in the session."""
    lo, hi = indices[0], indices[-1]
    cur = st.session_state.get("sel_layer_range")
    if not (isinstance(cur, (tuple, list)) and len(cur) == 2 and lo <= cur[0] <= cur[1] <= hi):
        st.session_state["sel_layer_range"] = (lo, hi)
    return _widget("layer_range", st.slider, label="Layer range", min_value=lo, max_value=hi,
                   help="Restricts the layer picker and the layers compared on the Spectrum and Overlap pages.")


def comparable_families(sel: "Selection") -> list[str]:
    """Built zoo families (other than the selected one) holding the selected layer with the same shape."""
    mine = next((g for g in load_catalog(sel.source) if g.name == sel.layer), None)
    out = []
    for r in registry.list_recipes():
        src = f"zoo:{r.name}"
        if src == sel.source or not registry.is_built(r.name):
            continue
        try:
            g = next((g for g in load_catalog(src) if g.name == sel.layer), None)
        except ExplorerError:
            continue
        if mine is not None and g is not None and g.shape == mine.shape and g.kind == mine.kind:
            out.append(src)
    return out


def layers_in_range(sel: "Selection") -> list[str]:
    """The layer groups of the selected layer's module type within the sidebar's layer range."""
    catalog = [g for g in load_catalog(sel.source) if g.n_models == len(load_family(sel.source))]
    mtype = next(g.module_type for g in catalog if g.name == sel.layer)
    rng = st.session_state.get("sel_layer_range")
    groups = select_groups(catalog, [mtype], tuple(rng)) if rng and any(g.index is not None for g in catalog) else []
    return [g.name for g in groups] or [g.name for g in catalog if g.module_type == mtype]


def _as_float(x, default: float) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def page_setup(title: str, icon: str = "🧭") -> Selection | None:
    """Configure the page, restore state, draw the shared sidebar; return the selection.

    Returns None (after showing why) when no valid family is selected; the page should stop.
    """
    st.set_page_config(page_title=f"{title} · Subspace Explorer", page_icon=icon, layout="wide")
    _init_state()
    return _sidebar()


# ----------------------------------------------------------------------------- exports
def export_bar(name: str, figures: dict[str, go.Figure] | None = None, tables: dict[str, pd.DataFrame] | None = None,
               res: explorer.Analysis | None = None) -> None:
    """Download buttons for a page: figures (HTML), tables (CSV), basis + coordinates, manifest.

    PNG export is the chart toolbar's camera button.
    """
    with st.expander("Export"):
        cols = st.columns(4)
        i = 0
        for label, fig in (figures or {}).items():
            cols[i % 4].download_button(f"{label} (HTML)", figure_html(fig), f"{name}-{label}.html", "text/html",
                                        key=f"dl_fig_{name}_{label}")
            i += 1
        for label, df in (tables or {}).items():
            cols[i % 4].download_button(f"{label} (CSV)", table_csv(df), f"{name}-{label}.csv", "text/csv",
                                        key=f"dl_tab_{name}_{label}")
            i += 1
        if res is not None:
            cols[i % 4].download_button("basis + coordinates (safetensors)", basis_safetensors(res),
                                        f"{name}-{res.group.name}-{res.spectrum.mode}.safetensors",
                                        "application/octet-stream", key=f"dl_basis_{name}")
            i += 1
            manifest = _manifest_text(res.source)
            if manifest is not None:
                cols[i % 4].download_button("family manifest (YAML)", manifest, "family.yaml", "application/yaml",
                                            key=f"dl_manifest_{name}")
        st.caption("PNG: use the camera button in each chart's toolbar.")


def _manifest_text(source: str) -> str | None:
    try:
        import yaml

        from explorer.sources.manifest import manifest_dict

        return yaml.safe_dump(manifest_dict(load_family(source)), sort_keys=False)
    except ExplorerError:
        return None


def metadata_table(res: explorer.Analysis) -> pd.DataFrame:
    """One row per model: name plus its labels (the colouring and hover columns)."""
    return pd.DataFrame([{"name": n, **lab} for n, lab in zip(res.models, res.labels)])
