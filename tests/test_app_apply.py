"""AppTest of the Apply page (compress, project a newcomer, merge) and of newcomers on the
Embedding page: what the page shows equals what the library computes, and deep links work."""
from __future__ import annotations

import numpy as np
import pytest

import explorer
from explorer.apply.compress_eval import compressed_accuracy
from explorer.apply.compression import compress_family
from explorer.apply.merge import merge_family
from explorer.apply.merge_eval import merge_accuracy
from explorer.apply.merge_rules import MERGE_METHODS, MergeOptions
from explorer.apply.newcomer import project_newcomers
from explorer.pipeline.analyze import analyze_cached
from tests.helpers import figure_json, start_app, trace

PAGE = "pages/6_Apply.py"


def _chart(at, trace_name: str) -> dict:
    """The decoded figure holding a trace named ``trace_name`` (every tab draws, in order)."""
    for el in at.get("plotly_chart"):
        fig = figure_json(el)
        if any(t.get("name") == trace_name for t in fig["data"]):
            return fig
    raise AssertionError(f"no chart with a trace {trace_name!r}")


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_compress_tab_shows_the_librarys_bytes_and_errors():
    at = start_app(PAGE, source="zoo:digits-lora", layer="layers.1")
    assert not at.exception and not at.error, [e.value for e in at.error]
    fam = explorer.load_family("zoo:digits-lora")
    comp = compress_family(fam, ["layers.1"], k=16)
    assert _metric(at, "bytes before") == f"{comp.bytes_before:,}"
    assert _metric(at, "bytes after") == f"{comp.bytes_after:,}"
    assert _metric(at, "mean relative error (update)") == f"{np.nanmean(comp.updates[0].errors):.3f}"
    fig = _chart(at, "A")
    a = comp.entry("layers.1", "A")
    np.testing.assert_allclose(trace(fig, "A")["y"][15], np.nanmean(a.error_curve()[:, 15]), rtol=1e-9)
    at.slider(key="apply_k").set_value(4).run()
    assert not at.exception
    assert _metric(at, "bytes after") == f"{compress_family(fam, ['layers.1'], k=4).bytes_after:,}"
    full = compress_family(fam, ["layers.1"], tau=1.0)
    k_max = max(e.k for e in full.entries)
    ks = sorted({1, 2, 4, 8, 16, 32, 64, 4, k_max} & set(range(1, k_max + 1)))
    curve, mean_only = compressed_accuracy("zoo:digits-lora", full.entries, ks)
    groups = fam.metadata.set_index("name")["task_group"]
    subset = curve[curve["model"].map(groups) == "subset"]
    acc = _chart(at, "subset")
    np.testing.assert_allclose(trace(acc, "subset")["y"], subset.groupby("k")["accuracy"].mean().to_numpy(), rtol=1e-12)
    # At k_max the adapters are themselves (to rounding), far above the mean layer.
    assert trace(acc, "subset")["y"][-1] > mean_only["accuracy"].mean()
    at.toggle(key="apply_dl_bundle_ready").set_value(True).run()
    assert not at.exception


def test_project_tab_and_the_newcomers_on_the_embedding_page():
    at = start_app(PAGE, source="zoo:digits-mlp-scratch", layer="layers.1")
    assert not at.exception
    at.selectbox(key="apply_new_pick").set_value("zoo:digits-random-init").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    fam = explorer.load_family("zoo:digits-mlp-scratch")
    res = analyze_cached(fam, "layers.1", None, explorer.SpectralOptions(), explorer.MetricsOptions(k_coord=8, k_angles=8))
    proj = project_newcomers(explorer.load_family("zoo:digits-random-init"), fam, res)
    shown = next(d.value for d in at.dataframe if "captured energy" in d.value.columns)
    np.testing.assert_allclose(shown["captured energy"].to_numpy(), [e.captured_energy for e in proj.entries], rtol=1e-12)
    at.button(key="apply_new_embed").click().run()
    assert not at.exception
    assert at.session_state["sel_newcomer"] == "zoo:digits-random-init"
    # Cold, by its share link: the Embedding page places the newcomers on the family's PCA axes.
    emb = start_app("pages/3_Embedding.py", source="zoo:digits-mlp-scratch", layer="layers.1",
                    newcomer="zoo:digits-random-init")
    assert not emb.exception and not emb.error, [e.value for e in emb.error]
    new = trace(_chart(emb, "newcomers"), "newcomers")
    assert len(new["x"]) == len(proj.entries)
    assert emb.query_params["newcomer"] in ("zoo:digits-random-init", ["zoo:digits-random-init"])


def test_merge_tab_table_equals_the_library():
    at = start_app(PAGE, source="zoo:digits-mlp-finetune", layer="layers.1")
    assert not at.exception and not at.error, [e.value for e in at.error]
    fam = explorer.load_family("zoo:digits-mlp-finetune")
    chosen = at.multiselect(key="apply_merge_models").value
    assert 1 <= len(chosen) <= 4
    merges = [merge_family(fam, chosen, None, MergeOptions(m)) for m in MERGE_METHODS]
    table, _ = merge_accuracy(fam.source, merges)
    shown = next(d.value for d in at.dataframe if "normalized mean" in d.value.columns)
    for method in MERGE_METHODS:
        want = table[table.model == method]["accuracy"].mean()
        assert shown.set_index("model").loc[method, "mean"] == pytest.approx(want, rel=1e-12)
    fig = _chart(at, "expert (own task)")
    assert {t["name"] for t in fig["data"]} == set(MERGE_METHODS) | {"expert (own task)"}


def test_coefficients_tab_trains_on_a_held_out_task():
    at = start_app(PAGE, source="zoo:digits-lora", layer="layers.1")
    assert not at.exception
    at.selectbox(key="apply_coef_task").set_value("rot+20").run()
    at.selectbox(key="apply_coef_rank").set_value(4).run()
    at.toggle(key="apply_coef_go").set_value(True).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from explorer.apply.coefficients import CoefficientOptions, coefficient_training

    want = coefficient_training("rot+20", CoefficientOptions(rank=4))
    shown = next(d.value for d in at.dataframe if "trainable" in d.value.columns)
    np.testing.assert_allclose(shown["accuracy"].to_numpy(), want["accuracy"].to_numpy(), rtol=1e-12)
    fig = _chart(at, "coefficients (basis frozen)")
    coef = want[want.method == "coefficients"].sort_values("trainable")
    np.testing.assert_allclose(trace(fig, "coefficients (basis frozen)")["y"], coef["accuracy"].to_numpy())
