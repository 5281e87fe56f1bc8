"""Generalization: is the subspace universal, or just fitted? Held-out coverage and projected accuracy."""
import numpy as np
import streamlit as st

import ui
from explorer.figures import accuracy_figure, coverage_figure, stability_figure
from explorer.present.curves import coverage_curves

sel, res = ui.page_analysis("Generalization", "🎯", "Generalization")
m = res.metrics
if m is None:
    st.info("No metrics were computed for this analysis.")
    st.stop()
n_k = m.energy_one.shape[1]
# One or two components (a layer with a dimension of 1, two models in model mode) leave nothing to pick,
# and a slider from 2 to 2 is an error.
max_k = st.slider("Largest k shown", 2, n_k, min(64, n_k), key="gen_maxk") if n_k > 2 else n_k
cov = coverage_curves(res)
fig = coverage_figure(cov.curves, bands=cov.bands, levels=cov.levels, max_k=int(max_k),
                      title=f"{res.group.name}: energy of models the basis was not fitted on")
st.plotly_chart(fig, key="gen_coverage")
st.markdown(
    "**Fitted** is the in-sample curve; **held-out** fits the basis without each model's fold (or without the "
    "model itself) and measures the models left out. If held-out tracks fitted, the subspace generalizes; if it "
    "falls to the **random-subspace** line, it was only fitted. **Mean-only** reconstructs a held-out model by "
    "its fold's mean model alone — the critics' strongest baseline. "
    + (" ".join(m.notes) if m.notes else "")
)
figs = {"coverage": fig}
tables = {"coverage": cov.table(int(max_k))}
if m.stability is not None:
    st.subheader("How many models until the subspace stabilises")
    sfig = stability_figure(m.stability)
    st.plotly_chart(sfig, key="gen_stability")
    st.caption(f"For N' models drawn without replacement ({m.stability.k_tau.shape[1]} draws per size): k(0.9) of "
               f"their spectrum and the overlap of their top-{m.stability.k} basis with the whole family's. Where both "
               "level off, more models of this kind add no new shared direction.")
    figs["stability"] = sfig

from explorer.present.projection import accuracy_against_k, supports  # noqa: E402  (zoo families only)

if supports(res):
    st.subheader("Accuracy after projection")
    ks_all = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= len(res.spectrum.eigenvalues)]
    ks = st.multiselect("k values", ks_all, default=ks_all, key="gen_ks")
    if ks:
        with st.spinner("Evaluating projected models…"):
            acc = accuracy_against_k(res, tuple(sorted(ks)))
        afig = accuracy_figure(np.array(sorted(ks)), acc.by_group, original=acc.original_by_group, chance=acc.chance,
                               heldout=acc.heldout_by_group)
        st.plotly_chart(afig, key="gen_accuracy")
        st.caption("Each model's layer is replaced by its projection onto the top-k shared directions; the other "
                   "layers are untouched. Solid: the basis every model helped fit (in-sample); dashed: a basis fitted "
                   "without the model's fold (held out). Dotted lines: the unprojected accuracy of each group.")
        figs["accuracy"] = afig
        tables["accuracy"] = acc.table()
else:
    st.caption("Accuracy after projection is available for the built-in zoo families, which carry an evaluator.")
ui.export_bar("generalization", figs, tables, res)
