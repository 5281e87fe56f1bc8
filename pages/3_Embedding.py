"""Embedding: each model as a point in the shared basis; select points to inspect them."""
import numpy as np
import pandas as pd
import streamlit as st

import ui
from explorer.apply.newcomer import project_newcomers
from explorer.core.errors import ExplorerError
from explorer.figures import coverage_figure, embedding_figure
from explorer.present.embedding import (
    METHODS,
    best_separating_label,
    embed,
    embed_with_newcomers,
    explained_ratio,
)
from explorer.present.tables import default_group_column, metadata_table

METHOD_LABELS = {"pca": "PCA (instant)", "umap": "UMAP (first use compiles, ~15 s)", "tsne": "t-SNE"}


@st.cache_data(show_spinner=False, max_entries=32)
def cached_embedding(key: str, method: str, dims: int, _x: np.ndarray) -> np.ndarray:
    """Embedding keyed by the analysis' content key (the features are not hashed)."""
    return embed(_x, method, dims)


sel, res = ui.page_analysis("Embedding", "🫧", "Models in the shared basis")
m = res.metrics
features = None
if m is not None:
    features = m.coords if m.coords is not None else m.scores
if features is None:
    st.info("No coordinates were computed for this analysis.")
    st.stop()
table = metadata_table(res)
c1, c2, c3 = st.columns(3)
method = c1.selectbox("Method", METHODS, format_func=METHOD_LABELS.get, key="emb_method")
dims = c2.radio("Dimensions", [2, 3], horizontal=True, key="emb_dims")
what = ("C_i = U_kᵀ W_i V_k, flattened" if m.coords is not None else "model-mode scores √λ_l q_il")
st.caption(f"Each point is one model; its features are its coordinates in the shared basis ({what}, "
           f"{features.shape[1]} numbers), placed by {method.upper()}. Box or lasso-select points to inspect them.")
try:
    if method == "pca":
        pts = cached_embedding(res.cache_key or "", method, dims, features)
    else:
        with st.spinner(f"Computing {method.upper()}…"):
            pts = cached_embedding(res.cache_key or "", method, dims, features)
except ExplorerError as exc:
    st.error(str(exc))
    st.stop()
newcomers = None
if sel.newcomer and m.coords is not None:
    # A newcomer from the Apply page (or a share link's newcomer=SOURCE), placed on the family's axes.
    try:
        proj = project_newcomers(ui.load_newcomers(sel.newcomer, sel.strict), ui.load_family(sel.source, sel.strict), res)
        placed = [e for e in proj.entries if e.coordinates.size == features.shape[1]]
        if placed:
            fam_pts, new_pts, how = embed_with_newcomers(features, np.stack([e.coordinates for e in placed]), method,
                                                         dims)
            pts, newcomers = fam_pts, (new_pts, [e.name for e in placed])
            st.caption(f"✕ {len(placed)} newcomer(s) from {sel.newcomer}: {how}. " + " ".join(proj.notes[1:]))
    except ExplorerError as exc:
        st.error(str(exc))
elif sel.newcomer:
    st.info("Newcomers are placed by their coordinates in an out- or in-mode basis; this analysis is model-mode.")
cols = [c for c in table.columns if c != "name"] or ["(none)"]
# Until the user picks a column, the default is the label whose groups the points separate best.
best = best_separating_label(pts, table) or default_group_column(table)
color_by = ui.defaulted_widget("emb_color", c3.selectbox, best, label="Colour by", options=cols,
                               help="Default: the label whose groups are best separated in this embedding "
                                    "(largest share of the points' variance between group means).")
titles = ("axis 1", "axis 2", "axis 3")
if method == "pca":
    r = explained_ratio(features, dims)
    titles = tuple(f"PC{i + 1} ({100 * r[i]:.1f} %)" for i in range(dims))
fig = embedding_figure(pts, table, None if color_by == "(none)" else color_by, axis_titles=titles,
                       title=f"{res.family} · {res.group.name} · {method.upper()} of shared-basis coordinates",
                       newcomers=newcomers)
event = st.plotly_chart(fig, key="emb_scatter", on_select="rerun", selection_mode=("points", "box", "lasso"))
chosen: list[int] = []
points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
    getattr(getattr(event, "selection", None), "points", []) or []
for p in points:
    cd = p.get("customdata")
    if cd is not None:
        chosen.append(int(cd[0] if isinstance(cd, (list, tuple)) else cd))
chosen = sorted(set(chosen))
figs = {"embedding": fig}
if chosen:
    st.subheader(f"{len(chosen)} selected models")
    st.dataframe(table.iloc[chosen], hide_index=True)
    rest = np.setdiff1d(np.arange(len(table)), chosen)
    curves = {"selected (mean)": np.nanmean(m.energy_one[chosen], axis=0)}
    if len(rest):
        curves["rest (mean)"] = np.nanmean(m.energy_one[rest], axis=0)
    sel_fig = coverage_figure(curves, title="Captured energy of the selected models vs the rest")
    st.plotly_chart(sel_fig, key="emb_selected_spectrum")
    figs["selected-vs-rest"] = sel_fig
else:
    st.caption("No points selected.")
coords = pd.concat([table, pd.DataFrame(pts, columns=[f"x{i + 1}" for i in range(dims)])], axis=1)
ui.export_bar("embedding", figs, {"points": coords}, res)
