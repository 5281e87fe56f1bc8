"""Spectrum: scree and cumulative explained variance of the chosen layer group."""
import pandas as pd
import streamlit as st

import ui
from explorer.analysis import TAUS
from explorer.figures import scree_figure

sel = ui.page_setup("Spectrum", "📉")
st.title("Spectrum")
if sel is None:
    st.stop()
res = ui.analysis(sel)
if res is None:
    st.stop()
sp = res.spectrum
left, right = st.columns([3, 1])
with right:
    log_y = st.toggle("Log scale", value=False, key="spectrum_log")
    n_max = st.number_input("Components shown", 4, max(4, len(sp.eigenvalues)), min(64, len(sp.eigenvalues)),
                            key="spectrum_ncomp")
    st.metric(f"k at τ = {sel.tau:g}", sp.k_at(sel.tau))
    st.dataframe(pd.DataFrame({"τ": [f"{t:g}" for t in TAUS], "k(τ)": [sp.k_at(t) for t in TAUS]}),
                 hide_index=True)
with left:
    fig = scree_figure(sp, sel.tau, log_y=log_y, max_components=int(n_max),
                       title=f"{res.family} · {res.group.name} · {sel.mode}-mode · centering {sel.center}")
    st.plotly_chart(fig, key="spectrum_scree")
st.caption(
    f"{sp.n_models} models, each {res.group.shape[0]}×{res.group.shape[1]}; eigenvalues of the "
    f"{sel.mode}-mode Gram (squared singular values of the unfolding), total energy {sp.total:.4g}."
)
