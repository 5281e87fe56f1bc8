"""Apply: use the shared basis — compress the family, project a newcomer, merge models."""
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

import ui
from explorer.apply.basis import APPLY_VIEWS
from explorer.apply.bundle import write_bundle
from explorer.apply.coefficients import SOURCE as COEF_SOURCE
from explorer.apply.coefficients import CoefficientOptions, coefficient_training
from explorer.apply.compress_eval import compressed_accuracy
from explorer.apply.compression import compress_family
from explorer.apply.merge import merge_family
from explorer.apply.merge_eval import merge_accuracy
from explorer.apply.merge_export import write_merged
from explorer.apply.merge_rules import MERGE_METHODS, MergeOptions
from explorer.apply.newcomer import project_newcomers
from explorer.apply.peft_export import write_peft_adapters
from explorer.core.errors import ExplorerError
from explorer.engine.options import SpectralOptions
from explorer.figures import accuracy_figure, coefficients_figure, compression_figure, merge_figure, newcomer_figure
from explorer.outputs.export import zip_folder
from explorer.present.apply import (
    accuracy_by_group,
    compression_table,
    default_merge_models,
    merge_pivot,
    newcomer_table,
)


@st.cache_data(show_spinner=False, max_entries=8)
def compressed(source: str, layer: str, views: tuple[str, ...], center: str, strict: bool):
    """The compression of one layer group keeping every stored direction (tau = 1): truncating it
    to any k is exact (:meth:`Compression.truncated`), so the slider computes nothing new."""
    fam = ui.load_family(source, strict)
    return compress_family(fam, [layer], tau=1.0, views=list(views), options=SpectralOptions(center=center),
                           strict=strict)


@st.cache_data(show_spinner=False, max_entries=8)
def accuracy_of(source: str, layer: str, views: tuple[str, ...], center: str, strict: bool, ks: tuple[int, ...]):
    comp = compressed(source, layer, views, center, strict)
    return compressed_accuracy(source, comp.entries, list(ks))


@st.cache_data(show_spinner=False, max_entries=8)
def coefficients_table(task: str, rank: int):
    return coefficient_training(task, CoefficientOptions(rank=rank))


@st.cache_data(show_spinner=False, max_entries=8)
def merged(source: str, models: tuple[str, ...], layers: tuple[str, ...] | None, k: int | None, lam: float | None,
           density: float, center: str, strict: bool):
    """Every rule on the same models (the paper's claim and the critics' control side by side)."""
    fam = ui.load_family(source, strict)
    return [merge_family(fam, list(models), list(layers) if layers else None,
                         MergeOptions(method=m, k=k, lam=lam, density=density), SpectralOptions(center=center),
                         strict=strict) for m in MERGE_METHODS]


def folder_download(label: str, write, name: str, key: str) -> None:
    """A download button for a folder the library writes (zipped), once the user asks for it:
    writing 500 adapters on every rerun would be the page's slowest part."""
    if not st.toggle(f"Prepare: {label}", False, key=f"{key}_ready"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp) / name)
        st.download_button(label, zip_folder(Path(tmp) / name), f"{name}.zip", "application/zip", key=key)


sel = ui.page_family("Apply", "🧰", "Apply the shared basis")
fam = ui.load_family(sel.source, sel.strict)
group = next(g for g in ui.load_catalog(sel.source) if g.name == sel.layer)
tab_c, tab_p, tab_m, tab_t = st.tabs(["Compress", "Project a newcomer", "Merge", "Coefficients only"])

# ------------------------------------------------------------------------------------------- compress
with tab_c:
    views = ("A", "B") if group.kind == "lora" else ((sel.view,) if sel.view in APPLY_VIEWS else ("full",))
    st.markdown(f"Keep k shared directions of **{sel.layer}** ({' and '.join(views)}, centring `{sel.center}`): "
                "store the basis and each model's coefficients instead of the models. "
                + ("LoRA factors are compressed as SHARE does: A in its input space, B in its output space, "
                   "each adapter at its own rank." if group.kind == "lora" else ""))
    try:
        with st.spinner("Compressing…"):
            full = compressed(sel.source, sel.layer, views, sel.center, sel.strict)
    except ExplorerError as exc:
        st.error(str(exc))
        full = None
    if full is not None:
        k_max = max(e.k for e in full.entries)
        # One direction (a layer with a dimension of 1) leaves nothing to pick, and a slider from 1 to 1 is an error.
        k = st.slider("k (directions kept per view)", 1, k_max, min(16, k_max), key="apply_k") if k_max > 1 else 1
        comp = full.truncated(k, fam)
        ui.skipped_warning(comp.skipped)
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("bytes before", f"{comp.bytes_before:,}")
        c2.metric("bytes after", f"{comp.bytes_after:,}", help=f"basis, centre and coefficients in {comp.dtype}")
        c3.metric("ratio", f"{comp.bytes_before / comp.bytes_after:.1f}×")
        err = comp.updates[0].errors if comp.updates else comp.entries[0].errors
        c4.metric("mean relative error" + (" (update)" if comp.updates else ""), f"{np.nanmean(err):.3f}")
        cfig = compression_figure({f"{e.view}": e.error_curve() for e in full.entries},
                                  mean_only={e.view: float(np.nanmean(e.mean_errors)) if e.mean_errors is not None
                                             else None for e in full.entries})
        st.plotly_chart(cfig, key="apply_compress_fig")
        st.caption("Mean relative error ‖W − Ŵ‖/‖W‖ over the models (band: 5–95 % of the models) against k; dotted: "
                   "every model replaced by the family's mean." + "".join(f" {n}." for n in comp.notes))
        table = compression_table(comp)
        st.dataframe(table, hide_index=True, key="apply_compress_table")
        figs, tables = {"compression": cfig}, {"compression": table}
        ks = tuple(sorted({1, 2, 4, 8, 16, 32, 64, k, k_max} & set(range(1, k_max + 1))))
        acc = accuracy_of(sel.source, sel.layer, views, sel.center, sel.strict, ks)
        if acc is not None:
            curve, mean_only = acc
            by_group, stored = accuracy_by_group(curve, fam.metadata)
            afig = accuracy_figure(np.array(ks), by_group, original=stored,
                                   levels={"mean only (all models)": float(mean_only["accuracy"].mean())},
                                   title="Accuracy from the compressed form against k")
            st.plotly_chart(afig, key="apply_compress_acc")
            st.caption("Each model's layer rebuilt from k directions and put back, on its own task (one line per "
                       "task group); dotted lines of the same colour: the models as stored; the 'mean only' level: "
                       "every model given the family's mean layer.")
            figs["accuracy"], tables["accuracy"] = afig, curve
        d1, d2 = st.columns(2)
        with d1:
            folder_download("bundle (basis + coefficients, zip)", lambda p: write_bundle(comp, p),
                            f"{fam.name.replace(':', '-')}-{sel.layer}-k{k}-bundle", "apply_dl_bundle")
        if group.kind == "lora" and all(m.adapter is not None for m in fam.models):
            with d2:
                folder_download("PEFT adapters (zip)", lambda p: write_peft_adapters(comp, fam, p),
                                f"{fam.name.replace(':', '-')}-{sel.layer}-k{k}-peft", "apply_dl_peft")
        ui.export_bar("apply-compress", figs, tables)

# -------------------------------------------------------------------------------------------- project
with tab_p:
    st.markdown("Place models that are **not** in the family on its basis, without refitting: how much of each one "
                "the family's directions capture, against what they capture of the family's own members *held out* "
                "of the fit; its nearest members; and whether it is an outlier.")
    offered = ui.comparable_families(sel)
    choice = st.selectbox("Newcomers", [""] + offered, format_func=lambda s: s or "(type a source below)",
                          key="apply_new_pick")
    typed = st.text_input("…or any SOURCE (folder, file, hf:ORG/REPO)", "", key="apply_new_typed").strip()
    with st.expander("…or upload the newcomers"):
        uploaded = ui.upload_picker("apply_new_upload", "Weight files, adapter folders as .zip")
    new_source = typed or uploaded or choice
    if new_source:
        try:
            res = ui.compute(sel)
            new_fam = ui.load_newcomers(new_source, sel.strict)
            proj = project_newcomers(new_fam, fam, res)
        except ExplorerError as exc:
            st.error(str(exc))
            proj = None
        if proj is not None:
            ui.skipped_warning(proj.skipped)
            ref = (res.metrics.heldout.loo if proj.reference == "leave-one-out" else res.metrics.heldout.kfold)
            pfig = newcomer_figure(ref[:, proj.k - 1], [(e.name, e.captured_energy, e.is_outlier) for e in proj.entries],
                                   k=proj.k, reference_name=proj.reference)
            st.plotly_chart(pfig, key="apply_newcomer_fig")
            st.caption(" ".join(proj.notes) + ". Outlier: robust z of the held-out residual above 3.5.")
            ptable = newcomer_table(proj)
            st.dataframe(ptable, hide_index=True, key="apply_newcomer_table")
            if st.button("Show them on the Embedding page", key="apply_new_embed"):
                st.session_state["sel_newcomer"] = new_source
                st.switch_page("pages/3_Embedding.py")
            ui.export_bar("apply-project", {"newcomers": pfig}, {"newcomers": ptable})

# ---------------------------------------------------------------------------------------------- merge
with tab_m:
    names = [m.name for m in fam.models]
    chosen = st.multiselect("Models to merge", names, default=default_merge_models(fam.metadata),
                            key="apply_merge_models", help="Default: up to four models of different tasks (on the "
                            "zoo: class subsets, noise or rotations, which share one label space).")
    c1, c2, c3, c4 = st.columns(4)
    only = c1.toggle(f"only {sel.layer}", False, key="apply_merge_only",
                     help="Merge this layer group alone (the others keep the base's); off: every layer group.")
    mk = c2.number_input("k (subspace; 0: k(0.9))", 0, 256, 0, key="apply_merge_k")
    lam = c3.number_input("λ (0: 0.3 for TA, 1 for TIES)", 0.0, 10.0, 0.0, 0.05, key="apply_merge_lam")
    density = c4.slider("TIES density", 0.05, 1.0, 0.2, 0.05, key="apply_merge_density")
    if len(chosen) >= 1:
        try:
            with st.spinner("Merging…"):
                merges = merged(sel.source, tuple(chosen), (sel.layer,) if only else None, int(mk) or None,
                                float(lam) or None, float(density), sel.center, sel.strict)
        except ExplorerError as exc:
            st.error(str(exc))
            merges = None
        if merges is not None:
            st.markdown("\n".join(f"- **{m.options.method}**: `{m.options.rule()}`" for m in merges))
            table, notes = merge_accuracy(sel.source, merges)
            mfigs, mtables = {}, {}
            if table is not None:
                mfig = merge_figure(table)
                st.plotly_chart(mfig, key="apply_merge_fig")
                pivot = merge_pivot(table)
                st.dataframe(pivot, hide_index=True, key="apply_merge_table")
                st.caption("Each merged model, and each chosen model as trained, on every chosen model's task; "
                           "'expert': the chosen models trained on that task. The subspace rule averages "
                           "coefficients in the shared basis, which is the projection of the mean merge (for LoRA: "
                           "factor by factor) — compare it with the mean.")
                mfigs["merge"], mtables["merge"] = mfig, pivot
            for n in notes + merges[0].notes[1:]:
                st.caption(n)
            pick = st.selectbox("Download the merge of", MERGE_METHODS, key="apply_merge_dl_pick")
            mg = merges[MERGE_METHODS.index(pick)]
            try:
                folder_download(f"{pick} merge ({'PEFT adapter' if mg.groups[0].group.kind == 'lora' else 'safetensors'}"
                                ", zip)", lambda p: write_merged(mg, fam, p), f"merge-{pick}", "apply_dl_merge")
            except ExplorerError as exc:
                st.error(str(exc))
            ui.export_bar("apply-merge", mfigs, mtables)
    else:
        st.info("Choose at least one model to merge.")

# ------------------------------------------------------------------------------------ coefficients only
with tab_t:
    st.markdown("Learn a task the basis never saw by training **only coefficients** in it: a rank-r adapter whose "
                "A rows stay in the shared input basis and B columns in the shared output basis (2·r·k numbers a "
                "layer), against a full LoRA of the same rank trained by the same recipe, the frozen base, and the "
                "family's mean update. The bases are fitted without the held-out task's adapters.")
    if sel.source != COEF_SOURCE:
        st.info(f"Training needs a family the explorer can train: it runs on {COEF_SOURCE} (open it in the "
                "sidebar).")
    else:
        tasks = sorted(set(fam.metadata["task"].astype(str)))
        c1, c2 = st.columns(2)
        task = c1.selectbox("Held-out task", tasks, index=tasks.index("rot+20") if "rot+20" in tasks else 0,
                            key="apply_coef_task")
        rank = c2.selectbox("Rank r", [2, 4, 8], index=2, key="apply_coef_rank")
        if st.toggle("Train (about 20 s on 2 cores)", False, key="apply_coef_go"):
            try:
                with st.spinner(f"Training on {task}…"):
                    ctable = coefficients_table(task, int(rank))
            except ExplorerError as exc:
                st.error(str(exc))
                ctable = None
            if ctable is not None:
                tfig = coefficients_figure(ctable, title=f"{task}: trainable parameters against accuracy")
                st.plotly_chart(tfig, key="apply_coef_fig")
                st.dataframe(ctable, hide_index=True, key="apply_coef_table")
                st.caption("Mean test accuracy over 3 trainings (seeds), with min and max.")
                ui.export_bar("apply-coefficients", {"coefficients": tfig}, {"coefficients": ctable})
