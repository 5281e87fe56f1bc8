"""Atlas: every layer group of the family with its verdict, as layers x modules heatmaps."""
import json

import streamlit as st

import ui
from explorer.catalog.views import views_for
from explorer.core.errors import ExplorerError
from explorer.engine.options import SpectralOptions
from explorer.figures.atlas import atlas_heatmap_figure
from explorer.pipeline.atlas import DEFAULT_VIEWS, atlas_plan, run_atlas
from explorer.present.atlas import GRID_VALUES, atlas_grid, atlas_table
from ui.progress import StatusProgress

# Atlases of at most this many (group, view) entries compute on opening; larger ones on a click.
AUTO_ENTRIES = 12

sel = ui.page_family("Atlas", "🗺️", "Atlas: is it universal here?")
fam = ui.load_family(sel.source, sel.strict)
catalog = ui.load_catalog(sel.source)
offered = list(dict.fromkeys(v for g in catalog for v in views_for(fam, g)))
left, mid, right = st.columns([2, 3, 1])
views = left.multiselect("Views", offered, default=[v for v in DEFAULT_VIEWS if v in offered] or offered[:1],
                         key="atlas_views", help="LoRA groups in these views (A in its input space, B in its output "
                         "space); dense groups in their own view.")
modules = mid.text_input("Layer groups (regex)", "", key="atlas_modules", help="e.g. q_proj|v_proj; empty: all")
k = right.number_input("k (0: auto)", 0, 256, 0, key="atlas_k", help="rank of each verdict's top-k energy; "
                       "auto is min(16, side / 4)")
try:
    plan = atlas_plan(fam, modules or None, views or offered[:1])
except ExplorerError as exc:
    st.error(str(exc))
    st.stop()
run_key = ("atlas_run", sel.source, modules, tuple(views), int(k), sel.center)
if len(plan) > AUTO_ENTRIES and st.session_state.get("atlas_ran") != run_key:
    st.info(f"{len(plan)} (layer group, view) analyses to run (each cached: an interrupted atlas resumes).")
    if not st.button("Compute the atlas", type="primary", key="atlas_go"):
        st.stop()
st.session_state["atlas_ran"] = run_key
try:
    with StatusProgress(f"Analysing {len(plan)} layer groups…", "Atlas ready") as progress:
        atlas = run_atlas(fam, modules or None, views or offered[:1], int(k) or None,
                          SpectralOptions(center=sel.center), sel.metrics, progress, strict=sel.strict,
                          scheduler=sel.scheduler or None)
except ExplorerError as exc:
    st.error(str(exc))
    st.stop()
ui.skipped_warning(atlas.skipped)
st.markdown(
    "Each cell is one layer group, judged against its baselines: **shared** beats the strength-matched Gaussian "
    "null and holds for models left out of the fit; **mean** beats the null but the family's mean alone explains "
    "as much; **fitted** beats the null in-sample only; **null** is what random models of the same strengths give. "
    "Click a cell to open that group on the Spectrum page. " + " ".join(atlas.notes) + "."
)
figs = {}
for view in dict.fromkeys(e.view for e in atlas.entries):
    st.subheader(f"View {view}")
    cols = st.columns(len(GRID_VALUES))
    for col, (value, meaning) in zip(cols, GRID_VALUES.items()):
        fig = atlas_heatmap_figure(atlas_grid(atlas, view, value), title=meaning, value_name=value)
        figs[f"{view}-{value}"] = fig
        event = col.plotly_chart(fig, key=f"atlas_{view}_{value}", on_select="rerun", selection_mode="points")
        points = (event or {}).get("selection", {}).get("points", [])
        if points and points[0].get("customdata"):
            ui.open_group(points[0]["customdata"], view)
table = atlas_table(atlas)
st.dataframe(table.drop(columns=["summary"]), hide_index=True, key="atlas_table")
pick = st.selectbox("Open on the Spectrum page", [f"{r.layer} · {r.view}" for r in table.itertuples()],
                    key="atlas_open")
if st.button("Open", key="atlas_open_go") and pick:
    ui.open_group(*pick.rsplit(" · ", 1))
with st.expander("Every verdict in words"):
    for r in table.itertuples():
        st.markdown(f"- **{r.layer} · {r.view}** — {r.summary}")
ui.export_bar("atlas", figs, {"atlas": table})
st.download_button("atlas.json", json.dumps(atlas.to_json(), indent=2, allow_nan=False), "atlas.json",
                   "application/json", key="dl_atlas_json")
