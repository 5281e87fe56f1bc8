"""AppTest for every page: the figure's data equals the engine's, widgets and deep links work."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import explorer
from explorer.sources import policy
from explorer.zoo import planted
from tests.helpers import figure_json, start_app, trace, write_adapter
from ui.progress import format_seconds

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))


@pytest.mark.parametrize("page", PAGES)
def test_every_page_draws_a_chart_without_error(page):
    at = start_app(page)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 1


def _scree_y(at: AppTest) -> np.ndarray:
    fig = figure_json(at.get("plotly_chart")[0])
    return trace(fig, "EVR per component")["y"]


def test_spectrum_scree_equals_engine_evr_and_follows_widgets():
    at = start_app("pages/1_Spectrum.py", source="zoo:planted", layer="layers.0")
    fam = explorer.load_family("zoo:planted")
    ref = explorer.analyze(fam, "layers.0").spectrum
    y = _scree_y(at)
    np.testing.assert_allclose(y, ref.evr[: len(y)], rtol=1e-9)

    at.sidebar.selectbox(key="w_layer").select_index(2).run()
    at.sidebar.radio(key="w_mode").set_value("in").run()
    assert not at.exception
    ref2 = explorer.analyze(fam, "layers.2", options=explorer.SpectralOptions(mode="in")).spectrum
    y2 = _scree_y(at)
    np.testing.assert_allclose(y2, ref2.evr[: len(y2)], rtol=1e-9)
    assert at.metric[0].value == str(planted.planted_rank("layers.2"))
    assert at.query_params["layer"] == ["layers.2"] or at.query_params["layer"] == "layers.2"


def test_deep_link_restores_state_on_a_cold_page():
    at = start_app("pages/1_Spectrum.py", source="zoo:planted", layer="layers.1", mode="in", center="model", tau="0.8")
    assert not at.exception
    assert at.sidebar.selectbox(key="w_layer").value == "layers.1"
    assert at.sidebar.radio(key="w_mode").value == "in"
    assert at.sidebar.selectbox(key="w_center").value == "model"
    assert at.sidebar.slider(key="w_tau").value == pytest.approx(0.8)
    fam = explorer.load_family("zoo:planted")
    ref = explorer.analyze(fam, "layers.1", options=explorer.SpectralOptions(mode="in", center="model")).spectrum
    assert at.metric[0].value == str(ref.k_at(0.8))


def charts(at: AppTest) -> dict[str, dict]:
    """Decoded figures of a page, by their element key's suffix (``spectrum_scree`` ...)."""
    out = {}
    for el in at.get("plotly_chart"):
        fig = figure_json(el)
        out[fig["layout"]["title"]["text"]] = fig
    return out


def test_spectrum_page_null_band_and_layer_views():
    at = start_app("pages/1_Spectrum.py", source="zoo:planted", layer="layers.0")
    assert not at.exception
    fam = explorer.load_family("zoo:planted")
    res = explorer.analyze(fam, "layers.0")
    figs = list(charts(at).values())
    scree = figs[0]
    med = trace(scree, "null median")["y"]
    # The null's draws are float32 (metrics.null_draws.NULL_DTYPE): an entry computed with another
    # thread count sums in another order, 4e-7 apart (seen with a cache/ filled by earlier runs).
    np.testing.assert_allclose(med, res.metrics.null.evr_median[: len(med)], rtol=1e-5)
    overlay = figs[1]
    assert [t["name"] for t in overlay["data"] if not t["name"].startswith("null")] == ["layers.0", "layers.1", "layers.2"]
    heat = figs[2]
    assert np.asarray(heat["data"][0]["z"]).shape[0] == 3
    table = at.dataframe[-1].value
    assert list(table["layer"]) == ["layers.0", "layers.1", "layers.2"]
    assert list(table["k@90%"]) == [planted.planted_rank(n) for n in ("layers.0", "layers.1", "layers.2")]


def test_overlap_page_heatmap_is_square_and_symmetric():
    at = start_app("pages/2_Overlap.py", source="zoo:planted", layer="layers.0", mode="in")
    assert not at.exception and not at.error
    figs = charts(at)
    model = next(f for t, f in figs.items() if t.startswith("Model × model"))
    z = np.asarray(model["data"][0]["z"], dtype=float)
    assert z.shape == (planted.N_MODELS, planted.N_MODELS)
    np.testing.assert_allclose(z, z.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(z), 1.0, atol=1e-9)
    res = explorer.analyze(explorer.load_family("zoo:planted"), "layers.0", options=explorer.SpectralOptions(mode="in"))
    np.testing.assert_allclose(z, res.metrics.overlaps.own, atol=1e-9)
    layers = next(f for t, f in figs.items() if t.startswith("Layer × layer"))
    # layers.0 and layers.2 both have 48 in-features; layers.1 (64) is not comparable.
    assert list(layers["data"][0]["y"]) == ["layers.0", "layers.2"]
    # The group x group overlaps beside their permutation null, the model overlaps beside random rotations.
    assert any(m.value.startswith("**Permutation null** (99 relabellings") for m in at.markdown)
    assert any("random-rotation reference" in c.value for c in at.caption)


def test_embedding_page_points_are_pca_of_coordinates():
    at = start_app("pages/3_Embedding.py", source="zoo:planted", layer="layers.0")
    assert not at.exception and not at.error
    fig = next(iter(charts(at).values()))
    n = sum(len(t["x"]) for t in fig["data"])
    assert n == planted.N_MODELS
    at.selectbox(key="emb_color").set_value("group").run()
    fig = next(iter(charts(at).values()))
    assert sorted(t["name"] for t in fig["data"]) == ["alpha", "beta"]
    at.radio(key="emb_dims").set_value(3).run()
    fig = next(iter(charts(at).values()))
    assert fig["data"][0]["type"] == "scatter3d"


def test_generalization_page_curves_equal_metrics():
    at = start_app("pages/4_Generalization.py", source="zoo:planted", layer="layers.0")
    assert not at.exception and not at.error
    fig = next(iter(charts(at).values()))
    res = explorer.analyze(explorer.load_family("zoo:planted"), "layers.0")
    fitted = trace(fig, "fitted (in-sample)")["y"]
    np.testing.assert_allclose(fitted, res.metrics.energy_one.mean(0)[: len(fitted)], rtol=1e-9)
    names = [t["name"] for t in fig["data"]]
    assert "random subspace" in names and any(n.startswith("held-out") for n in names)


def test_bad_source_shows_st_error_and_app_keeps_running():
    at = start_app("pages/1_Spectrum.py", source="/no/such/folder")
    assert not at.exception
    assert any("/no/such/folder" in e.value for e in at.error)
    # The sidebar is still usable: pick the built-in zoo again and the charts come back.
    at.sidebar.radio(key="w_kind").set_value("Built-in zoo").run()
    at.sidebar.selectbox(key="w_zoo").set_value("zoo:planted").run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) >= 1


def test_families_overlaid_and_compared():
    at = start_app("pages/1_Spectrum.py", source="zoo:digits-mlp-finetune", layer="layers.1")
    assert not at.exception and not at.error
    at.multiselect(key="spectrum_families").set_value(["zoo:digits-mlp-scratch", "zoo:digits-random-init"]).run()
    assert not at.exception and not at.error
    overlay = next(f for t, f in charts(at).items() if t.startswith("Cumulative EVR, layers overlaid"))
    names = [t["name"] for t in overlay["data"]]
    assert "zoo:digits-mlp-scratch · layers.1" in names and "zoo:digits-random-init · layers.1" in names
    scratch = explorer.analyze_cached("zoo:digits-mlp-scratch", "layers.1")
    y = trace(overlay, "zoo:digits-mlp-scratch · layers.1")["y"]
    np.testing.assert_allclose(y, scratch.spectrum.cumulative[: len(y)], rtol=1e-9)

    at = start_app("pages/2_Overlap.py", source="zoo:digits-mlp-finetune", layer="layers.1", k="4")
    assert not at.exception and not at.error
    at.multiselect(key="overlap_families").set_value(["zoo:digits-mlp-scratch"]).run()
    fam = next(f for t, f in charts(at).items() if t.startswith("Family × family"))
    z = np.asarray(fam["data"][0]["z"], dtype=float)
    assert z.shape == (2, 2) and z[0, 1] == pytest.approx(z[1, 0]) and 0 <= z[0, 1] <= 1
    # k from the URL sets the size of each model's own subspace
    assert "top-4" in next(t for t in charts(at) if t.startswith("Model × model"))


def test_a_miss_shows_progress_and_a_hit_draws_nothing(family_factory, monkeypatch, tmp_path):
    # A fresh cache root: the first run must compute (and say so), the rerun reads the disk cache.
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)
    folder = family_factory("fresh", {f"m{i}": {"layers.0.weight": rng.standard_normal((10, 7))} for i in range(5)},
                            {f"m{i}": {"group": "ab"[i % 2]} for i in range(5)})
    at = start_app("pages/4_Generalization.py", source=str(folder), layer="layers.0")
    assert not at.exception and not at.error
    kind = at.sidebar.radio(key="w_kind")
    assert kind.value == policy.SOURCE_KIND_LABELS[policy.source_kind(str(folder))] == "Local path"
    assert list(kind.options) == list(policy.SOURCE_KIND_LABELS.values())
    assert [(s.label, s.state) for s in at.status] == [("layers.0 decomposed", "complete")]
    at.run()
    assert not at.exception and not at.error and len(at.get("plotly_chart")) >= 1
    assert not at.status


def test_status_progress_shows_each_phase_with_time_left():
    def script():
        from ui.progress import StatusProgress

        with StatusProgress("Working…", "all done") as progress:
            for i in range(1, 5):
                progress(i, 10, "reading")
        try:
            with StatusProgress("Failing…", "never shown") as progress:
                progress(1, 2, "reading")
                raise ValueError("boom")
        except ValueError:
            pass
        with StatusProgress("Silent…", "nothing computed"):
            pass

    at = AppTest.from_function(script).run()
    assert not at.exception
    # The silent one (no progress reported, like a cache hit) drew no box.
    assert [(s.label, s.state) for s in at.status] == [("all done", "complete"), ("Failing… failed", "error")]
    bar = at.status[0].get("progress")[0]
    # The first call of a phase starts its clock; later ones extrapolate the phase's rate.
    assert bar.proto.text.startswith("reading: 4/10 · about ") and bar.proto.text.endswith(" left")
    assert format_seconds(0.2) == "1 s" and format_seconds(90) == "90 s" and format_seconds(600) == "10 min"


def test_switching_the_view_sets_its_mode_and_the_url_mode_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(6)
    m, n, r = 7, 9, 3  # r < 4: A's out-mode scree has fewer components than the picker's usual minimum
    for i in range(5):
        write_adapter(tmp_path / "lora" / f"a{i}", {"blk.0.fc": (rng.standard_normal((r, n)), rng.standard_normal((m, r)))}, r)
    src = str(tmp_path / "lora")
    fam = explorer.load_family(src)
    # Components of each (view, mode): A's in-mode spans R^n, its out-mode only the r x r factor space.
    sizes = {("dW", "out"): m, ("A", "in"): n, ("A", "out"): r, ("B", "out"): m}

    def state(at: AppTest) -> tuple[str, str]:
        """The sidebar's (view, mode), after checking that the scree is that analysis' EVR."""
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
        view, mode = at.sidebar.selectbox(key="w_view").value, at.sidebar.radio(key="w_mode").value
        ref = explorer.analyze(fam, "blk.0.fc", view=view, options=explorer.SpectralOptions(mode=mode), metrics=None)
        assert len(ref.spectrum.evr) == sizes[view, mode]
        y = _scree_y(at)
        np.testing.assert_allclose(y, ref.spectrum.evr[: len(y)], rtol=1e-9)
        return view, mode

    at = start_app("pages/1_Spectrum.py", source=src, layer="blk.0.fc")
    assert state(at) == ("dW", "out")
    at.sidebar.selectbox(key="w_view").set_value("A").run()
    assert state(at) == ("A", "in")
    assert at.query_params["mode"] in ("in", ["in"])
    # A mode picked by hand holds until the view changes again.
    at.sidebar.radio(key="w_mode").set_value("out").run()
    assert state(at) == ("A", "out")
    at.sidebar.selectbox(key="w_center").set_value("none").run()
    assert state(at) == ("A", "out")
    at.sidebar.selectbox(key="w_view").set_value("B").run()
    assert state(at) == ("B", "out")
    at.sidebar.selectbox(key="w_view").set_value("A").run()
    assert state(at) == ("A", "in")
    # A share link's mode wins on the first load; without one, the view's default applies.
    assert state(start_app("pages/1_Spectrum.py", source=src, layer="blk.0.fc", view="A", mode="out")) == ("A", "out")
    assert state(start_app("pages/1_Spectrum.py", source=src, layer="blk.0.fc", view="A")) == ("A", "in")


def test_atlas_page_heatmaps_hold_the_verdicts_and_open_a_group():
    at = start_app("pages/5_Atlas.py", source="zoo:digits-lora", layer="layers.0")
    assert not at.exception and not at.error, [e.value for e in at.error]
    from explorer.pipeline.atlas import run_atlas
    atlas = run_atlas(explorer.load_family("zoo:digits-lora"), views=("A", "B"),
                      options=explorer.SpectralOptions(), metrics=explorer.MetricsOptions())
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # views A and B, each effect and held-out ratio
    effect_a = figure_json(charts[0])["data"][0]
    by_group = {e.group.name: e.verdict for e in atlas.entries if e.view == "A"}
    for row, layer in enumerate(effect_a["y"]):
        group = effect_a["customdata"][row][0]
        assert effect_a["z"][row][0] == pytest.approx(by_group[group].effect, rel=1e-9)
        assert group.startswith("layers." + layer)
    assert {e.verdict.label for e in atlas.entries} == {"shared"}
    at.selectbox(key="atlas_open").set_value("layers.2 · B").run()
    at.button(key="atlas_open_go").click().run()
    assert not at.exception
    assert at.session_state["sel_layer"] == "layers.2" and at.session_state["sel_view"] == "B"


def test_tour_verdict_step_judges_the_zoo():
    # Fine-tunes share a subspace that is mostly their mean; untrained networks are null-like.
    at = start_app("app.py")
    assert not at.exception
    verdicts = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    by_family = dict(zip(verdicts["family"], verdicts["verdict"]))
    assert by_family["fine-tunes of one base"] == "shared, mostly the mean"
    assert by_family["untrained (random init)"] == "null-like"


def test_spectrum_page_states_the_verdict_and_the_shared_init_check():
    at = start_app("pages/1_Spectrum.py", source="zoo:digits-lora", layer="layers.0", view="B")
    assert not at.exception and not at.error
    assert any(s.value.startswith("**Verdict (top 16 directions)** — shared:") for s in at.success)
    found = [m.value for m in at.markdown if m.value.startswith("Found: ")]
    assert found and "share an A initialisation" in found[0]
    assert any(m.value.startswith("- **independent inits**") for m in at.markdown)


def test_spectrum_preview_on_a_miss_leaves_the_page_as_a_hit_draws_it(family_factory):
    """A computed analysis first draws the scree from the spectrum alone (pages/1_Spectrum.py's
    scree_preview, while the metrics run); once it returns the preview is gone and the page is
    exactly what a cache hit draws."""
    rng = np.random.default_rng(7)
    mats = {f"m{i}": {"layers.0.weight": rng.standard_normal((12, 9))} for i in range(6)}
    folder = str(family_factory("preview-fam", mats))
    cold = start_app("pages/1_Spectrum.py", source=folder, layer="layers.0")
    assert not cold.exception and not cold.error
    warm = start_app("pages/1_Spectrum.py", source=folder, layer="layers.0")
    assert not warm.exception and not warm.error
    assert list(charts(cold)) == list(charts(warm))
    assert len(cold.get("plotly_chart")) == len(warm.get("plotly_chart")) == 3
