"""Subspace Explorer — home and tour.  Run with ``streamlit run app.py``."""
import streamlit as st

import ui
from explorer.figures import scree_figure

sel = ui.page_setup("Home", "🧭")
st.title("Subspace Explorer")
st.markdown(
    "Do networks of one architecture, trained on different tasks, data and seeds, share a few "
    "dominant directions in each layer's weights? This tool stacks a **family** of models layer by "
    "layer, computes the **joint spectral decomposition**, and shows how much of the family's weight "
    "energy a few shared directions hold — always beside the baselines that decide whether that "
    "structure is real."
)
if sel is None:
    st.stop()
res = ui.analysis(sel)
if res is None:
    st.stop()
sp = res.spectrum
c1, c2, c3 = st.columns(3)
c1.metric("Models in the family", sp.n_models)
c2.metric(f"Components for τ = {sel.tau:g}", sp.k_at(sel.tau), help="smallest k whose cumulative EVR ≥ τ")
c3.metric("Dimension of the space", len(sp.eigenvalues))
st.markdown(
    f"**The scree curve** of `{res.group.name}` ({sel.mode}-mode): each bar is the share of the family's "
    "weight energy along one shared direction, the line their running total. A sharp knee means a few "
    "shared directions carry most of the weights. Open **Spectrum** in the sidebar for the full view."
)
st.plotly_chart(scree_figure(sp, sel.tau), key="home_scree")
