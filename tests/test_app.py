"""AppTest for every page: the figure's data equals the engine's, widgets and deep links work."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import explorer
from explorer.zoo import planted
from tests.helpers import figure_json, trace

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))


def start(page: str, **query) -> AppTest:
    """Open ``page`` as its first run in a fresh session (like a cold deep link), with ``query``.

    The app is loaded from app.py (so the page registry is the app's) and switched to ``page``
    before anything runs: app.py itself never executes first.
    """
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    if page != "app.py":
        at.switch_page(page)
    if query:
        at.query_params.update(query)
    return at.run()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_draws_a_chart_without_error(page):
    at = start(page)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 1


def _scree_y(at: AppTest) -> np.ndarray:
    fig = figure_json(at.get("plotly_chart")[0])
    return trace(fig, "EVR per component")["y"]


def test_spectrum_scree_equals_engine_evr_and_follows_widgets():
    at = start("pages/1_Spectrum.py")
    fam = explorer.load_family("zoo:planted")
    ref = explorer.analyze(fam, "layers.0").spectrum
    y = _scree_y(at)
    np.testing.assert_allclose(y, ref.evr[: len(y)], rtol=1e-12)

    at.sidebar.selectbox(key="w_layer").select_index(2).run()
    at.sidebar.radio(key="w_mode").set_value("in").run()
    assert not at.exception
    ref2 = explorer.analyze(fam, "layers.2", options=explorer.SpectralOptions(mode="in")).spectrum
    y2 = _scree_y(at)
    np.testing.assert_allclose(y2, ref2.evr[: len(y2)], rtol=1e-12)
    assert at.metric[0].value == str(planted.planted_rank("layers.2"))
    assert at.query_params["layer"] == ["layers.2"] or at.query_params["layer"] == "layers.2"


def test_deep_link_restores_state_on_a_cold_page():
    at = start("pages/1_Spectrum.py", source="zoo:planted", layer="layers.1", mode="in", center="model", tau="0.8")
    assert not at.exception
    assert at.sidebar.selectbox(key="w_layer").value == "layers.1"
    assert at.sidebar.radio(key="w_mode").value == "in"
    assert at.sidebar.selectbox(key="w_center").value == "model"
    assert at.sidebar.slider(key="w_tau").value == pytest.approx(0.8)
    fam = explorer.load_family("zoo:planted")
    ref = explorer.analyze(fam, "layers.1", options=explorer.SpectralOptions(mode="in", center="model")).spectrum
    assert at.metric[0].value == str(ref.k_at(0.8))


def test_bad_source_shows_st_error_and_app_keeps_running():
    at = start("pages/1_Spectrum.py", source="/no/such/folder")
    assert not at.exception
    assert any("/no/such/folder" in e.value for e in at.error)
    # The sidebar is still usable: pick the built-in family again and the chart comes back.
    at.sidebar.selectbox(key="w_family_choice").set_value("zoo:planted").run()
    assert not at.exception and len(at.get("plotly_chart")) == 1
