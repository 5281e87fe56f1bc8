"""Shared page scaffolding: sidebar pickers, state <-> URL query string, cached loaders.

Every page starts with ``sel = ui.page_setup("Title")``.  A page opened cold by URL (a share
link, a reload on a restarted server) runs without app.py, so nothing here relies on another
page having run: state is initialised from the query string, then from defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import explorer
from explorer.catalog import LayerGroup, build_catalog
from explorer.errors import ExplorerError
from explorer.spectral import CENTERS, MODES, SpectralOptions
from explorer.views import VIEWS
from explorer.zoo import registry

DEFAULTS: dict[str, str] = {
    "source": "zoo:planted",
    "layer": "",
    "view": "full",
    "mode": "out",
    "center": "none",
    "tau": "0.9",
}
OTHER = "Other source…"
MODE_LABELS = {"out": "out — output space (columns)", "in": "in — input space (rows)", "model": "model — N×N Gram"}


@dataclass(frozen=True)
class Selection:
    """What the sidebar picked: small hashable values (the keys of every cached computation)."""

    source: str
    layer: str
    view: str
    mode: str
    center: str
    tau: float

    @property
    def options(self) -> SpectralOptions:
        return SpectralOptions(mode=self.mode, center=self.center)


@st.cache_resource(show_spinner=False, max_entries=16)
def load_family(source: str) -> explorer.Family:
    """The family for a SOURCE string, shared by all sessions (it holds no tensor data)."""
    return explorer.load_family(source)


@st.cache_data(show_spinner=False, max_entries=16)
def load_catalog(source: str) -> list[LayerGroup]:
    return build_catalog(load_family(source))


@st.cache_data(show_spinner=False, max_entries=64)
def run_analysis(source: str, layer: str, view: str, mode: str, center: str) -> explorer.Analysis:
    """Cached analysis keyed by small values, never by tensors."""
    fam = load_family(source)
    return explorer.analyze(fam, layer, view=view, options=SpectralOptions(mode=mode, center=center))


def _ensure_zoo(source: str) -> None:
    """Build a zoo family on first use, showing progress, before the cached loader runs."""
    if not source.startswith("zoo:"):
        return
    name = source[4:]
    if registry.is_built(name):
        return
    with st.status(f"Building {source} (first run only)…", expanded=True) as status:
        bar = st.progress(0.0)

        def progress(done: int, total: int, label: str) -> None:
            bar.progress(min(done / max(total, 1), 1.0), text=f"{label}: {done}/{total}")

        registry.ensure_built(name, progress=progress)
        status.update(label=f"{source} built", state="complete", expanded=False)


def _init_state() -> None:
    """Fill ``sel_*`` session keys once per session: from the URL first, then defaults."""
    if st.session_state.get("_restored"):
        return
    qp = st.query_params
    for field, default in DEFAULTS.items():
        st.session_state[f"sel_{field}"] = qp.get(field, default)
    st.session_state["_restored"] = True


def _widget(field: str, make, **kwargs):
    """Draw a widget whose value survives page switches and comes from the URL on a cold start.

    Streamlit drops a widget's state when a page that does not draw it runs, so the value lives
    in ``sel_<field>``; the widget key is seeded from it before the widget is drawn, and an
    ``on_change`` callback (which runs before the rerun) copies the user's change back.
    """
    wkey, skey = f"w_{field}", f"sel_{field}"
    options = kwargs.get("options")
    if options is not None and st.session_state[skey] not in options:
        st.session_state[skey] = options[0]
    st.session_state[wkey] = st.session_state[skey]

    def sync() -> None:
        st.session_state[skey] = st.session_state[wkey]

    return make(key=wkey, on_change=sync, **kwargs)


def _zoo_sources() -> list[str]:
    return [f"zoo:{r.name}" for r in registry.list_recipes() if r.default or registry.is_built(r.name)]


# (file, label, icon) of every page; the sidebar navigation is drawn here so labels are ours.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("app.py", "Home · tour", "🧭"),
    ("pages/1_Spectrum.py", "Spectrum", "📉"),
)


def _nav() -> None:
    for path, label, icon in PAGES:
        st.sidebar.page_link(path, label=label, icon=icon)
    st.sidebar.divider()


def _sidebar() -> Selection | None:
    sb = st.sidebar
    _nav()
    sb.header("Family")
    zoo = _zoo_sources()
    current = st.session_state["sel_source"]
    if "sel_family_choice" not in st.session_state:
        st.session_state["sel_family_choice"] = current if current in zoo else OTHER
    with sb:
        choice = _widget("family_choice", st.selectbox, label="Model family", options=zoo + [OTHER],
                         help="Built-in zoo families, or any SOURCE: a folder path or zoo:NAME.")
        if choice == OTHER:
            st.session_state.setdefault("sel_other", "" if current in zoo else current)
            source = _widget("other", st.text_input, label="SOURCE", placeholder="/path/to/folder or zoo:NAME")
        else:
            source = choice
    source = (source or "").strip()
    st.session_state["sel_source"] = source
    if not source:
        sb.info("Enter a SOURCE to analyse.")
        return None
    try:
        _ensure_zoo(source)
        fam = load_family(source)
        catalog = load_catalog(source)
    except ExplorerError as exc:
        st.error(str(exc))
        return None
    sb.caption(f"{len(fam)} models · {len(catalog)} layer groups")
    for line in fam.skipped:
        sb.warning(f"skipped: {line}")

    sb.header("Layer group")
    types = sorted({g.module_type for g in catalog})
    by_name = {g.name: g for g in catalog}
    layer_now = st.session_state["sel_layer"]
    if "sel_module_type" not in st.session_state:  # cold start: the layer from the URL decides
        st.session_state["sel_module_type"] = by_name[layer_now].module_type if layer_now in by_name else types[0]
    with sb:
        mtype = _widget("module_type", st.selectbox, label="Module type", options=types)
        names = [g.name for g in catalog if g.module_type == mtype]
        layer = _widget("layer", st.selectbox, label="Layer", options=names,
                        format_func=lambda n: f"{n}  ({'×'.join(map(str, by_name[n].shape))})")
        sb.header("Decomposition")
        view = _widget("view", st.selectbox, label="View", options=list(VIEWS),
                       help="full: weights as stored; delta: minus a base model; A/B/dW: LoRA factors")
        mode = _widget("mode", st.radio, label="Mode", options=list(MODES), format_func=MODE_LABELS.get)
        center = _widget("center", st.selectbox, label="Centering", options=list(CENTERS),
                         help="none (default; gauge-invariant for LoRA); model: subtract the mean model; "
                         "vector: subtract the mean column/row of the unfolding (EigenLoRAx/SHARE style)")
        tau_now = float(st.session_state["sel_tau"]) if _is_float(st.session_state["sel_tau"]) else 0.9
        st.session_state["sel_tau"] = round(min(max(tau_now, 0.5), 0.99), 2)
        tau = _widget("tau", st.slider, label="Threshold τ", min_value=0.5, max_value=0.99, step=0.01)
    sel = Selection(source, layer, view, mode, center, float(tau))
    st.query_params.from_dict({"source": sel.source, "layer": sel.layer, "view": sel.view, "mode": sel.mode,
                               "center": sel.center, "tau": f"{sel.tau:g}"})
    return sel


def _is_float(x) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def page_setup(title: str, icon: str = "🧭") -> Selection | None:
    """Configure the page, restore state, draw the shared sidebar; return the selection.

    Returns None (after showing why) when no valid family is selected; the page should stop.
    """
    st.set_page_config(page_title=f"{title} · Subspace Explorer", page_icon=icon, layout="wide")
    _init_state()
    return _sidebar()


def analysis(sel: Selection) -> explorer.Analysis | None:
    """Run (or fetch from cache) the analysis for a selection; show errors with st.error."""
    try:
        with st.spinner(f"Decomposing {sel.layer} ({sel.view}, {sel.mode}-mode)…"):
            return run_analysis(sel.source, sel.layer, sel.view, sel.mode, sel.center)
    except ExplorerError as exc:
        st.error(str(exc))
        return None
