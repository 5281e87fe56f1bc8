"""Subspace Explorer — home and tour.  Run with ``streamlit run app.py``."""
import numpy as np
import pandas as pd
import streamlit as st

import ui
from explorer.core.errors import ExplorerError
from explorer.figures import (
    coverage_figure,
    cumulative_overlay_figure,
    embedding_figure,
    scree_figure,
)
from explorer.present.curves import coverage_curves
from explorer.present.embedding import embed
from explorer.present.tables import default_group_column, metadata_table

TOUR_FAMILY, TOUR_LAYER = "zoo:digits-mlp-finetune", "layers.1"
CONTRASTS = (("fine-tunes of one base", "zoo:digits-mlp-finetune"), ("trained from scratch", "zoo:digits-mlp-scratch"),
             ("untrained (random init)", "zoo:digits-random-init"))

sel = ui.page_setup("Home", "🧭")
st.title("Subspace Explorer")
st.markdown(
    "Do networks of one architecture, trained on different tasks, data and seeds, share a few dominant "
    "directions in each layer's weights — the *Universal Weight Subspace Hypothesis*? This tool stacks a "
    "**family** of models layer by layer, computes the **joint spectral decomposition**, and shows how much of "
    "the family's weight energy a few shared directions hold — always beside the baselines that decide whether "
    "that structure is real. The tour below runs live on the built-in zoo; the sidebar picks any family for "
    "the other pages."
)
if sel is None and ui.no_family():
    ui.family_guide()


def tour_sel(source: str) -> ui.Selection:
    return ui.Selection(source=source, layer=TOUR_LAYER, view="full", mode="out", center="none",
                        tau=sel.tau if sel else 0.9)


try:
    for _, src in CONTRASTS:
        ui.ensure_zoo(src)
    main = ui.compute(tour_sel(TOUR_FAMILY))
except ExplorerError as exc:
    st.error(str(exc))
    st.stop()
ui.skipped_warning(main.skipped)
m = main.metrics
table = metadata_table(main)
figs = {}


def show(name: str, key: str, fig) -> None:
    """Draw one tour figure and keep it for the export bar."""
    figs[name] = fig
    st.plotly_chart(fig, key=key)

steps = st.tabs(["1 · A model family", "2 · The scree curve", "3 · Against null families",
                 "4 · Held-out models", "5 · Accuracy after projection", "6 · The verdict"])
with steps[0]:
    st.markdown(
        f"A **family** is N models of one architecture: here {len(main.models)} fine-tunes of one pretrained MLP "
        "on different digit tasks. Each point is one model, placed by its coordinates in the family's shared basis "
        f"of `{TOUR_LAYER}`; colour shows its task group."
    )
    pts = embed(m.coords, "pca", 2)
    show("family", "tour_family", embedding_figure(pts, table, default_group_column(table),
                                      title="Fine-tunes, placed by their shared-basis coordinates"))
with steps[1]:
    st.markdown(
        "Stack the family's matrices and decompose them jointly: each bar is the share of all the weight energy "
        "along one shared direction. A steep drop means a few shared directions carry most of every model."
    )
    show("scree", "tour_scree", scree_figure(main.spectrum, tour_sel(TOUR_FAMILY).tau, max_components=40,
                                 null=m.null, mp_edge_evr=m.mp_edge_evr,
                                 title=f"Fine-tunes · {TOUR_LAYER}: scree against the Gaussian null"))
with steps[2]:
    st.markdown(
        "A steep curve alone proves little: fine-tunes share their base, and random matrices have spectra too. "
        "Compare families trained from scratch, untrained networks, and a strength-matched Gaussian null (dashed)."
    )
    try:
        curves = [(label, ui.compute(tour_sel(src)).spectrum.cumulative) for label, src in CONTRASTS]
    except ExplorerError as exc:
        st.error(str(exc))
        curves = []
    show("families", "tour_null", cumulative_overlay_figure(curves, tour_sel(TOUR_FAMILY).tau, max_components=64,
                                                 null=("Gaussian null (median)", m.null.cum_median) if m.null else None,
                                                 title=f"{TOUR_LAYER}: cumulative EVR by family"))
with steps[3]:
    st.markdown(
        "A subspace fitted on some models should also hold models it never saw. Held-out curves fit the basis "
        "without each model's fold; the mean-only line reconstructs a held-out model by the mean model alone — "
        "for fine-tunes it is high, because most of every model is the shared base (the critics' point)."
    )
    cov = coverage_curves(main)
    show("held-out", "tour_heldout", coverage_figure(cov.curves, bands=cov.bands, levels=cov.levels, max_k=64,
                                       title="Captured energy of held-out fine-tunes"))
with steps[4]:
    st.markdown(
        "The paper's central test: replace a layer by its projection onto k shared directions and measure "
        "accuracy. If a few components keep each task's accuracy, the shared subspace is functionally real — and "
        "if they keep it with a basis fitted without the model (dashed), it is more than fitted."
    )
    from explorer.figures import accuracy_figure
    from explorer.present.projection import accuracy_against_k

    ks = (1, 2, 4, 8, 16, 32, 64)
    acc = accuracy_against_k(main, ks)
    show("accuracy", "tour_accuracy", accuracy_figure(np.array(ks), acc.by_group, original=acc.original_by_group, chance=acc.chance,
                                       heldout=acc.heldout_by_group,
                                       title=f"Fine-tunes: accuracy with {TOUR_LAYER} projected onto k components"))
with steps[5]:
    st.markdown(
        "Each curve beside its baselines gives a **verdict**: does the layer beat the strength-matched Gaussian null "
        "(a p-value and an effect size: top-16 energy over the null's), does the subspace hold models left out of "
        "its fit, and is it more than the family's mean? The Atlas page gives one per layer group of any family."
    )
    rows = []
    for label, src in CONTRASTS:
        try:
            v = ui.compute(tour_sel(src)).verdict()
        except ExplorerError as exc:
            st.error(str(exc))
            continue
        rows.append({"family": label, "verdict": v.label, "effect": round(v.effect, 3), "p": f"{v.p_value:.2g}",
                     "held-out / fitted": round(v.heldout_ratio, 3), "summary": v.summary})
    verdicts = pd.DataFrame(rows)
    st.dataframe(verdicts.drop(columns=["summary"]), hide_index=True, key="tour_verdicts")
    for r in rows:
        st.markdown(f"- **{r['family']}** — {r['summary']}.")
ui.export_bar("tour", figs, {"fine-tunes": table, "verdicts": verdicts}, main)
st.caption("Next: open **Spectrum**, **Overlap**, **Embedding**, **Generalization** or **Atlas** in the sidebar for any family.")
