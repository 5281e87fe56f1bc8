"""The shared sidebar: family, layer group and decomposition pickers; returns the selection."""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from explorer.catalog.groups import LayerGroup, layer_indices, select_groups
from explorer.catalog.views import default_mode, views_for
from explorer.core.errors import ExplorerError
from explorer.engine.options import CENTERS, MODES
from ui.cluster import pick_scheduler
from ui.families import ensure_zoo, load_family, split_catalog
from ui.source_picker import pick_source
from ui.state import Selection, as_flag, as_float, widget, write_query

K_CHOICES: tuple[int, ...] = (2, 4, 8, 16, 32)
TAU_RANGE: tuple[float, float] = (0.5, 0.99)
MODE_LABELS: dict[str, str] = {"out": "out — output space (columns)", "in": "in — input space (rows)",
                               "model": "model — N×N Gram"}
VIEW_HELP = ("full: weights as stored · delta: minus the base model · A / B: LoRA factors stacked as the "
             "paper does · dW: the LoRA update s·B·A, computed factored")
MODE_HELP = ("Picking a view sets its mode: in for A (the input space its rows span), out for the others "
             "(B's columns span the output space); pick another mode after the view to override it.")
CENTER_HELP = ("none (default; gauge-invariant for LoRA) · model: subtract the mean model · "
               "vector: subtract the mean column/row of the unfolding (EigenLoRAx/SHARE style)")
STRICT_HELP = ("Off: members that cannot be read, or hold NaN/Inf, are left out and listed above the charts. "
               "On: such a family is refused, naming its first bad member.")
K_HELP = ("Dimension of each model's own subspace in the overlap views and of the coordinate "
          "block C_i = U_kᵀ W_i V_k placed by the embedding.")
# Groups not held by every model are listed, up to this many (a broken family can have thousands).
_MAX_PARTIAL_SHOWN = 50


def sidebar() -> Selection | None:
    """Draw the pickers below the page links; return the selection, or None (after saying why).

    The selection is also written to the query string, so the URL reopens this view.
    """
    # A share link's strict=... is a string until the toggle has been drawn once.
    st.session_state["sel_strict"] = as_flag(st.session_state.get("sel_strict"))
    sb = st.sidebar
    with sb:
        st.header("Family")
        source = pick_source()
        strict = widget("strict", st.toggle, label="Strict: refuse a family with a bad member", help=STRICT_HELP)
    st.session_state["sel_source"] = source
    if not source:
        sb.info("Choose a model family to analyse.")
        return None
    try:
        ensure_zoo(source)
        fam = load_family(source, strict)
        catalog, partial = split_catalog(source)
    except ExplorerError as exc:
        st.error(str(exc))
        return None
    sb.caption(f"{len(fam)} {fam.kind} models · {len(catalog)} layer groups")
    if partial:
        with sb.expander(f"{len(partial)} groups not held by every model"):
            for g in partial[:_MAX_PARTIAL_SHOWN]:
                st.caption(f"{g.name}: {g.n_models}/{len(fam)} models" +
                           (f" — {g.problems[0][0]}: {g.problems[0][1]}" if g.problems else ""))
    if not catalog:
        st.error(f"{source}: no layer group is held by all {len(fam)} models with one shape")
        return None
    if fam.skipped:
        with sb.expander(f"{len(fam.skipped)} members skipped"):
            for s in fam.skipped:  # captions: the page's one st.warning lists them above the charts
                st.caption(s.line())
    with sb:
        layer = _pick_layer(catalog)
        group = next(g for g in catalog if g.name == layer)
        sel = replace(_pick_decomposition(source, layer, list(views_for(fam, group))), strict=strict,
                      newcomer=str(st.session_state.get("sel_newcomer") or "").strip(), scheduler=pick_scheduler())
    write_query(sel)
    return sel


def _pick_layer(catalog: list[LayerGroup]) -> str:
    """Module type, layer range (when the type has several layers) and layer pickers."""
    by_name = {g.name: g for g in catalog}
    types = sorted({g.module_type for g in catalog})
    layer_now = st.session_state["sel_layer"]
    if "sel_module_type" not in st.session_state or layer_now in by_name:
        # The layer (from the URL, or the one last picked) decides the module type.
        st.session_state["sel_module_type"] = by_name[layer_now].module_type if layer_now in by_name else types[0]
    st.header("Layer group")
    mtype = widget("module_type", st.selectbox, label="Module type", options=types)
    names = [g.name for g in catalog if g.module_type == mtype]
    indices = layer_indices(catalog, [mtype])
    if len(indices) > 1:
        lo, hi = _layer_range(indices)
        names = [g.name for g in select_groups(catalog, [mtype], (lo, hi))] or names
    return widget("layer", st.selectbox, label="Layer", options=names,
                  format_func=lambda n: f"{n} ({'×'.join(map(str, by_name[n].shape))})")


def _pick_decomposition(source: str, layer: str, views: list[str]) -> Selection:
    """View, mode, centering, τ and k pickers; values from the URL are clamped to what they allow."""
    st.header("Decomposition")
    view = widget("view", st.selectbox, label="View", options=views, help=VIEW_HELP)
    _follow_view(view)
    mode = widget("mode", st.radio, label="Mode", options=list(MODES), format_func=MODE_LABELS.get,
                  help=MODE_HELP)
    center = widget("center", st.selectbox, label="Centering", options=list(CENTERS), help=CENTER_HELP)
    lo, hi = TAU_RANGE
    st.session_state["sel_tau"] = round(min(max(as_float(st.session_state["sel_tau"], 0.9), lo), hi), 2)
    tau = widget("tau", st.slider, label="Threshold τ", min_value=lo, max_value=hi, step=0.01)
    k_now = as_float(st.session_state["sel_k"], 8)
    st.session_state["sel_k"] = min(K_CHOICES, key=lambda c: abs(c - k_now))
    k = widget("k", st.select_slider, label="k (own subspaces, coordinates)", options=list(K_CHOICES), help=K_HELP)
    return Selection(source, layer, view, mode, center, float(tau), int(k))


def _follow_view(view: str) -> None:
    """Set the mode to ``view``'s default whenever the view changes (A: in, the others: out).

    ``sel_mode_view`` remembers the view the mode was last set for, so a mode the user picked
    survives page switches and layer changes, and is replaced only when the view itself changes
    (picked, or clamped by a new family).  On a session's first run a mode given in the URL
    (a share link) wins; an empty or unknown one becomes the view's default.
    """
    previous = st.session_state.get("sel_mode_view")
    if previous != view and (previous is not None or st.session_state.get("sel_mode") not in MODES):
        st.session_state["sel_mode"] = default_mode(view)
    st.session_state["sel_mode_view"] = view


def _layer_range(indices: list[int]) -> tuple[int, int]:
    """Slider over the layer numbers of the chosen module type; kept in the session."""
    lo, hi = indices[0], indices[-1]
    cur = st.session_state.get("sel_layer_range")
    if not (isinstance(cur, (tuple, list)) and len(cur) == 2 and lo <= cur[0] <= cur[1] <= hi):
        st.session_state["sel_layer_range"] = (lo, hi)
    return widget("layer_range", st.slider, label="Layer range", min_value=lo, max_value=hi,
                  help="Restricts the layer picker and the layers compared on the Spectrum and Overlap pages.")


def layers_in_range(sel: Selection) -> list[str]:
    """The layer groups of the selected layer's module type within the sidebar's layer range."""
    catalog, _ = split_catalog(sel.source)
    mtype = next(g.module_type for g in catalog if g.name == sel.layer)
    rng = st.session_state.get("sel_layer_range")
    groups = select_groups(catalog, [mtype], tuple(rng)) if rng and any(g.index is not None for g in catalog) else []
    return [g.name for g in groups] or [g.name for g in catalog if g.module_type == mtype]
