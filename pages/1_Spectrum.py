"""Spectrum: scree and cumulative curves beside the null, several layers overlaid, layer heatmap."""
import pandas as pd
import streamlit as st

import ui
from explorer.core.errors import ExplorerError
from explorer.core.linalg import k_at
from explorer.figures import (
    cumulative_overlay_figure,
    layer_heatmap_figure,
    scree_figure,
)
from explorer.pipeline.shared_init import shared_init_check
from explorer.present.curves import cumulative_matrix
from explorer.present.tables import layer_summary



def scree_preview(sel: ui.Selection, sp) -> None:
    """The scree from the spectrum alone, while the null band, held-out curves and verdict are computed."""
    n_comp = len(sp.eigenvalues)
    n_max = min(max(4, int(st.session_state.get("spectrum_ncomp") or 64)), n_comp)
    st.plotly_chart(scree_figure(sp, sel.tau, log_y=bool(st.session_state.get("spectrum_log")), max_components=n_max,
                                 title=f"{sel.layer} · {sp.mode}-mode · centering {sel.center}"),
                    key="spectrum_preview")
    st.caption(f"{sp.n_models} models decomposed; the Gaussian null band, the held-out curves and the verdict are "
               "being computed (see the progress above).")


sel, res = ui.page_analysis("Spectrum", "📉", "Spectrum", preview=scree_preview)
sp, m = res.spectrum, res.metrics
left, right = st.columns([3, 1])
with right:
    log_y = st.toggle("Log scale", value=False, key="spectrum_log")
    # A spectrum can have fewer than 4 components (A's out-mode is r x r, model mode N x N).
    n_comp = len(sp.eigenvalues)
    n_max = st.number_input("Components shown", min(4, n_comp), max(4, n_comp), min(64, n_comp),
                            key="spectrum_ncomp")
    show_null = st.toggle("Gaussian null band + MP edge", value=True, key="spectrum_null",
                          help="Each model replaced by iid Gaussian entries of its own shape and strength, centred as the data is; "
                               "median and a band of stated coverage (100 draws where affordable).")
    st.metric(f"k at τ = {sel.tau:g}", sp.k_at(sel.tau))
    stab = m.stability if m is not None else None
    show_ci = stab is not None and st.toggle("Confidence band (half-sampling)", value=True, key="spectrum_ci",
                                             help="Error bars: a 90 % band of each component's EVR from random halves of "
                                                  "the family (no model counted twice), bias-corrected: a family's top "
                                                  "components look stronger than its population's, so the band may sit "
                                                  "below the bar.")
    if stab is not None:
        j = next((i for i, t in enumerate(stab.taus) if abs(t - sel.tau) < 1e-9), None)
        if j is not None:
            st.caption(f"90 % band of k({sel.tau:g}) over random halves: {int(stab.k_ci[j, 0])}–{int(stab.k_ci[j, 1])}")
null = m.null if show_null and m is not None else None
with left:
    fig = scree_figure(sp, sel.tau, log_y=log_y, max_components=int(n_max), null=null,
                       mp_edge_evr=m.mp_edge_evr if (show_null and m is not None) else None,
                       ci=(stab.evr_lo, stab.evr_hi) if show_ci else None,
                       title=f"{res.family} · {res.group.name} · {res.view} · {sel.mode}-mode · centering {sel.center}")
    st.plotly_chart(fig, key="spectrum_scree")
st.caption(
    f"{sp.n_models} models, each {res.group.shape[0]}×{res.group.shape[1]}; eigenvalues of the "
    f"{sel.mode}-mode Gram (squared singular values of the unfolding), total energy {sp.total:.4g}. "
    "Bars above the grey null band are structure a strength-matched random family would not show."
)
if null is not None:
    st.caption(null.caption + ".")
if m is not None:
    verdict = res.verdict()
    # Green only for structure that beat every baseline it was compared with (warnings are kept for input
    # the page could not use as asked).
    show_verdict = st.success if verdict.label == "shared" else st.info
    show_verdict(f"**Verdict (top {verdict.k} directions)** — {verdict.summary}.")
if res.group.kind == "lora":
    with st.expander("Shared A initialisation: the verdict within each cluster of adapters"):
        try:
            check = shared_init_check(ui.load_family(sel.source, sel.strict), res.group, res.view, sel.options,
                                      sel.metrics, strict=sel.strict)
        except ExplorerError as exc:
            st.error(str(exc))
            check = None
        if check is not None:
            st.markdown(f"Found: {check.clusters.describe()}. Adapters are "
                        f"clustered by the |cos| of their A factors (average linkage at {check.clusters.threshold:g}): "
                        "a shared init makes view A's shared subspace partly the init's.")
            if check.within:
                st.dataframe(pd.DataFrame([{"cluster": c.name, "adapters": len(c.members),
                                            "verdict": c.verdict.label if c.verdict else "too few adapters",
                                            "effect": round(c.verdict.effect, 3) if c.verdict else None,
                                            "p": f"{c.verdict.p_value:.2g}" if c.verdict else ""} for c in check.within]),
                             hide_index=True, key="spectrum_init_table")
                for c in check.within:
                    if c.verdict is not None:
                        st.markdown(f"- **{c.name}** ({len(c.members)}) — {c.verdict.summary}.")

st.subheader("Layers of this module type (sidebar layer range)")
same_type = ui.layers_in_range(sel)
default_layers = same_type if len(same_type) <= 8 else same_type[:: max(1, len(same_type) // 8)]
chosen = st.multiselect("Layers to compare", same_type, default=default_layers, key="spectrum_layers")
results = {}
if chosen:
    try:
        for i, name in enumerate(chosen):
            results[name] = ui.compute(sel, layer=name)
    except ExplorerError as exc:
        st.error(str(exc))
others = st.multiselect(f"Overlay other families ({sel.layer}, same shape)", ui.comparable_families(sel),
                        key="spectrum_families",
                        help="e.g. fine-tunes vs models trained from scratch vs untrained ones")
family_curves = []
try:
    family_curves = [(src, ui.compute(sel, source=src).spectrum.cumulative) for src in others]
except ExplorerError as exc:
    st.error(str(exc))
if results:
    curves = [(name, r.spectrum.cumulative) for name, r in results.items()]
    curves += [(f"{src} · {sel.layer}", cum) for src, cum in family_curves]
    first = next(iter(results.values()))
    null_curve = None
    if first.metrics is not None and first.metrics.null is not None:
        null_curve = (f"null median ({chosen[0]})", first.metrics.null.cum_median)
    c1, c2 = st.columns(2)
    overlay = cumulative_overlay_figure(curves, sel.tau, max_components=int(n_max), null=null_curve,
                                        title="Cumulative EVR, layers overlaid")
    c1.plotly_chart(overlay, key="spectrum_overlay")
    # k(τ) from the whole curves: a long-tailed layer's lies beyond the columns shown.
    heat = layer_heatmap_figure([n for n, _ in curves], cumulative_matrix([c for _, c in curves], int(n_max)), sel.tau,
                                k_tau=[k_at(c, sel.tau) for _, c in curves])
    c2.plotly_chart(heat, key="spectrum_heatmap")
    table = pd.DataFrame([layer_summary(name, r) for name, r in results.items()])
    st.dataframe(table, hide_index=True)
    ui.export_bar("spectrum", {"scree": fig, "overlay": overlay, "heatmap": heat}, {"layer-summary": table}, res)
else:
    ui.export_bar("spectrum", {"scree": fig}, None, res)
