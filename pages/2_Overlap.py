"""Overlap: how much the models' own subspaces, the layers and the groups share directions."""
from dataclasses import replace

import numpy as np
import pandas as pd
import streamlit as st

import ui
from explorer.core.errors import ExplorerError
from explorer.figures import (
    angle_distribution_figure,
    overlap_heatmap_figure,
    universal_overlap_figure,
)
from explorer.metrics.angles import layer_overlap
from explorer.metrics.permutation import group_permutation_summary
from explorer.metrics.sums import MAX_GROUPS
from explorer.metrics.random_reference import random_overlap_band, random_principal_angles
from explorer.present.decimate import decimate_square
from explorer.present.overlap import overlap_scale
from explorer.present.tables import group_columns, metadata_table

sel, res = ui.page_analysis("Overlap", "🔀", "Subspace overlap")
m = res.metrics
scale = overlap_scale(res)
if scale is None:
    st.info("Overlaps compare each model's own top-k subspace in the output (out-mode) or input (in-mode) "
            "space; pick the out or in mode in the sidebar.")
    st.stop()
ov = m.overlaps
k, d, expect = scale.k, scale.d, scale.expectation
table = metadata_table(res)
group_cols = group_columns(table)
st.markdown(
    f"Each model's own top-{k} subspace (from its own SVD) against the others' and against the shared "
    f"top-{k} basis. Overlap = Σcos²θ / k ∈ [0, 1]; two random {k}-dim subspaces of R^{d} overlap "
    f"**{expect:.3f}** in expectation."
)
tab_models, tab_layers, tab_groups, tab_families = st.tabs(["Models", "Layers", "Groups", "Families"])
with tab_models:
    names, mat = decimate_square(res.models, ov.own, 200)
    heat = overlap_heatmap_figure(mat, names, title=f"Model × model overlap (top-{k} own subspaces)", expectation=expect)
    c1, c2 = st.columns(2)
    c1.plotly_chart(heat, key="overlap_models")
    angles = angle_distribution_figure(ov.cosines, random_angles=random_principal_angles(d, k))
    c2.plotly_chart(angles, key="overlap_angles")
    rot_med, rot_lo, rot_hi = random_overlap_band(d, k)
    pairs = ov.own[~np.eye(len(ov.own), dtype=bool)]
    st.caption(f"Mean model × model overlap **{np.nanmean(pairs):.3f}** (median {np.nanmedian(pairs):.3f}); randomly "
               f"rotated {k}-dim subspaces of R^{d} overlap {rot_med:.3f} [{rot_lo:.3f}, {rot_hi:.3f}] (5–95 %, "
               "random-rotation reference)." if pairs.size else "One model: no pairs to compare.")
    color_col = st.selectbox("Colour by", ["(none)"] + group_cols, key="overlap_color")
    bars = universal_overlap_figure(res.models, ov.vs_universal,
                                    None if color_col == "(none)" else table[color_col].astype(str).tolist(),
                                    expectation=expect)
    st.plotly_chart(bars, key="overlap_universal")
with tab_layers:
    same = ui.layers_in_range(sel)
    picked = st.multiselect("Layers", same, default=same[:12], key="overlap_layers")
    layer_fig = None
    try:
        # The selected layer first: layers whose basis lives in another dimension are dropped.
        order = [sel.layer] + [n for n in picked if n != sel.layer] if sel.layer in picked else picked
        bases = {n: ui.compute(sel, layer=n).spectrum.basis for n in order}
    except ExplorerError as exc:
        st.error(str(exc))
        bases = {}
    if len(bases) >= 2:
        names_l, mat_l = layer_overlap(bases, k)
        layer_fig = overlap_heatmap_figure(mat_l, names_l, title=f"Layer × layer overlap of the shared top-{k} bases",
                                           expectation=expect)
        st.plotly_chart(layer_fig, key="overlap_layers_heat")
        if len(names_l) < len(bases):
            st.caption("Layers whose basis lives in another dimension are left out.")
    else:
        st.info("Pick at least two layers of this module type.")
with tab_groups:
    group_fig = None
    if group_cols:
        fitted_by = m.groups.by if m.groups is not None else None
        current = fitted_by if fitted_by in group_cols else group_cols[0]
        by = st.selectbox("Group by", group_cols, index=group_cols.index(current), key="overlap_group_by",
                          help="A basis is fitted per group (e.g. init_group for the shared-A critique of LoRA).")
        if by != fitted_by:
            try:
                m = ui.compute(sel, metrics=replace(sel.metrics, group_by=by)).metrics
            except ExplorerError as exc:
                st.error(str(exc))
    if m.groups is not None:
        gr = m.groups
        group_fig = overlap_heatmap_figure(gr.overlap, gr.names,
                                           title=f"Group × group overlap (basis fitted per '{gr.by}')",
                                           expectation=expect)
        st.plotly_chart(group_fig, key="overlap_groups")
        perm = group_permutation_summary(gr.overlap, gr.permuted)
        if perm is not None:
            tail = ("more distinct than groups of randomly relabelled models" if perm["p_distinct"] <= 0.05 else
                    "more alike than groups of randomly relabelled models" if perm["p_alike"] <= 0.05 else
                    "no different from groups of randomly relabelled models")
            st.markdown(
                f"**Permutation null** ({int(perm['permutations'])} relabellings, group sizes kept): the mean overlap "
                f"between groups is **{perm['observed']:.3f}**, against **{perm['median']:.3f}** "
                f"[{perm['lo']:.3f}, {perm['hi']:.3f}] for random labels: the '{gr.by}' groups are {tail} "
                f"(p = {perm['p_distinct']:.2g} distinct, {perm['p_alike']:.2g} alike). The k/d line compares with "
                "random subspaces, which groups of one family never are.")
        st.dataframe(pd.DataFrame({"group": gr.names, "overlap with universal": np.round(gr.vs_universal, 4)}),
                     hide_index=True)
    else:
        st.info(f"No metadata column with 2–{MAX_GROUPS} groups was found for group × group overlaps.")
with tab_families:
    family_fig = None
    others = st.multiselect(f"Families to compare ({sel.layer}, same shape)", ui.comparable_families(sel),
                            key="overlap_families")
    try:
        fam_bases = {sel.source: res.spectrum.basis} | {src: ui.compute(sel, source=src).spectrum.basis for src in others}
    except ExplorerError as exc:
        st.error(str(exc))
        fam_bases = {}
    if len(fam_bases) >= 2:
        names_f, mat_f = layer_overlap(fam_bases, k)
        family_fig = overlap_heatmap_figure(mat_f, names_f, expectation=expect,
                                            title=f"Family × family overlap of the shared top-{k} bases ({sel.layer})")
        st.plotly_chart(family_fig, key="overlap_families_heat")
    else:
        st.info("Pick other families holding this layer to compare their shared subspaces.")
own = pd.DataFrame({"name": res.models, "overlap with universal": ov.vs_universal})
figs = {"model-overlap": heat, "angles": angles, "universal": bars}
if layer_fig is not None:
    figs["layer-overlap"] = layer_fig
if family_fig is not None:
    figs["family-overlap"] = family_fig
ui.export_bar("overlap", figs, {"model-overlap": pd.DataFrame(ov.own, index=res.models, columns=res.models).reset_index(),
                                "universal-overlap": own}, res)
