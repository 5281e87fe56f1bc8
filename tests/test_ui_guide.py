"""AppTest: the guide shown while no family is chosen, and the Embedding page's default colour."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import explorer
from explorer.present.embedding import best_separating_label, embed
from explorer.present.tables import metadata_table
from explorer.sources.policy import SOURCE_KIND_LABELS
from tests.helpers import figure_json, start_app
from ui.guide import guide_markdown

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["app.py"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))
GUIDE_TITLE = "No model family chosen yet"


def shows_guide(at: AppTest) -> bool:
    return any(GUIDE_TITLE in m.value for m in at.main.markdown)


def test_guide_text_names_the_offered_sources_only():
    text = guide_markdown(tuple(SOURCE_KIND_LABELS))
    assert GUIDE_TITLE in text and "A **family**" in text
    for label in SOURCE_KIND_LABELS.values():
        assert f"**{label}**" in text
    assert "zoo:digits-lora" in text and "adapter_config.json" in text and "Hugging Face cache" in text
    server = guide_markdown(("zoo", "hub", "upload"))  # server mode without local roots
    assert "**Local path**" not in server and "**Built-in zoo**" in server
    no_zoo = guide_markdown(("local",))
    assert "**Built-in zoo**" not in no_zoo and "give a source in the sidebar" in no_zoo


@pytest.mark.parametrize("page", PAGES)
def test_a_page_without_a_family_shows_the_guide_and_no_error(page):
    at = start_app(page, source="")  # an empty source reads as "Local path" with nothing typed yet
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.sidebar.radio(key="w_kind").value == SOURCE_KIND_LABELS["local"]
    assert shows_guide(at)
    if page != "app.py":  # the home page still runs its tour on the built-in zoo
        assert not at.get("plotly_chart")


def test_switching_to_local_path_shows_the_guide_and_its_button_returns_to_the_zoo():
    at = start_app("pages/1_Spectrum.py", source="zoo:planted", layer="layers.0")
    assert not shows_guide(at) and at.get("plotly_chart")
    at.sidebar.radio(key="w_kind").set_value(SOURCE_KIND_LABELS["local"]).run()
    assert not at.exception and not at.error
    assert shows_guide(at) and not at.get("plotly_chart")
    at.button(key="guide_open_zoo").click().run()
    assert not at.exception and not at.error
    assert at.sidebar.radio(key="w_kind").value == SOURCE_KIND_LABELS["zoo"]
    assert not shows_guide(at) and at.get("plotly_chart")


def test_embedding_colour_defaults_to_the_best_separating_label_and_a_pick_wins():
    at = start_app("pages/3_Embedding.py", source="zoo:planted", layer="layers.0")
    assert not at.exception and not at.error
    res = explorer.analyze(explorer.load_family("zoo:planted"), "layers.0",
                           metrics=explorer.MetricsOptions(k_coord=8, k_angles=8))
    table = metadata_table(res)
    best = best_separating_label(embed(res.metrics.coords, "pca", 2), table)
    assert best is not None
    box = at.selectbox(key="emb_color")
    assert box.value == best
    fig = figure_json(at.get("plotly_chart")[0])
    assert sorted(t["name"] for t in fig["data"]) == sorted(table[best].astype(str).unique())
    # the user's pick survives reruns and a switch of dimensions (the default would be recomputed)
    other = next(c for c in box.options if c not in (best, "name"))
    box.set_value(other).run()
    at.radio(key="emb_dims").set_value(3).run()
    assert not at.exception and at.selectbox(key="emb_color").value == other
    fig = figure_json(at.get("plotly_chart")[0])
    assert fig["data"][0]["type"] == "scatter3d"
    assert np.isfinite(np.concatenate([np.asarray(t["x"], dtype=float) for t in fig["data"]])).all()
