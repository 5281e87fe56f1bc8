"""Playwright + Debian Chromium: every page really draws its charts, and redraws on a widget change."""
from __future__ import annotations

import re

import pytest

from tests.conftest import screenshot, screenshot_dir

pytestmark = pytest.mark.browser
PLOT = ".js-plotly-plot .main-svg"
Q = "source=zoo:planted&layer=layers.0"
DIGITS = "source=zoo:digits-mlp-finetune&layer=layers.1"
# Drawn traces: bar paths, scatter traces, heatmap images, WebGL canvases (scattergl / 3-D).
TRACES = ", ".join(f".js-plotly-plot {s}" for s in (".bars path", ".scatterlayer .trace", ".heatmaplayer image",
                                                     ".gl-container canvas"))


def open_page(page, base: str, path: str, query: str = Q) -> None:
    page.goto(f"{base}/{path}{'?' + query if query else ''}")
    page.wait_for_selector(PLOT, timeout=180_000)
    # Plotly draws traces as SVG paths/points inside the plot area (or WebGL for scattergl).
    page.wait_for_selector(TRACES, state="attached", timeout=60_000)


def titles(page) -> list[str]:
    return page.eval_on_selector_all(".js-plotly-plot .gtitle", "els => els.map(e => e.textContent)")


def wait_title(page, needle: str) -> None:
    page.wait_for_function(
        "n => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(e => e.textContent.includes(n))",
        arg=needle, timeout=120_000)


def test_non_home_page_opened_first_on_a_fresh_server(streamlit_server, page):
    # A deep link straight to a page, before any other page has run on this server.
    open_page(page, streamlit_server, "Spectrum", "source=zoo:planted&layer=layers.2&mode=in")
    wait_title(page, "layers.2 · full · in-mode")
    assert page.locator(f"{PLOT} .bars path").count() > 0
    screenshot(page, "deep-link-spectrum")


def test_home_tour_draws_every_step(streamlit_server, page):
    open_page(page, streamlit_server, "", "")
    assert page.get_by_text("Subspace Explorer").first.is_visible()
    # Click through the tour; each step's chart is drawn when its tab opens.
    steps = [("1 · A model family", "Fine-tunes, placed by"), ("2 · The scree curve", "scree against the Gaussian null"),
             ("3 · Against null families", "cumulative EVR by family"), ("4 · Held-out models", "held-out fine-tunes"),
             ("5 · Accuracy after projection", "accuracy with layers.1 projected")]
    for i, (tab, title) in enumerate(steps, 1):
        page.get_by_role("tab", name=tab).click()
        wait_title(page, title)
        chart = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text=title)).first
        chart.scroll_into_view_if_needed()
        chart.screenshot(path=str(screenshot_dir() / f"tour-{i}.png"))
        if i == 2:
            screenshot(page, "page-home")


def test_spectrum_redraws_on_mode_change(streamlit_server, page):
    open_page(page, streamlit_server, "Spectrum", DIGITS)
    wait_title(page, "layers.1 · full · out-mode")
    page.get_by_role("radiogroup").get_by_text("in — input space (rows)").click()
    wait_title(page, "layers.1 · full · in-mode")
    assert page.locator(f"{PLOT}").count() >= 3  # scree, overlay, heatmap
    screenshot(page, "page-spectrum")


def test_overlap_redraws_on_tab_and_colour(streamlit_server, page):
    open_page(page, streamlit_server, "Overlap", DIGITS)
    wait_title(page, "Model × model overlap")
    page.get_by_role("tab", name="Groups").click()
    wait_title(page, "Group × group overlap")
    screenshot(page, "page-overlap")


def test_embedding_redraws_on_dimension_change(streamlit_server, page):
    open_page(page, streamlit_server, "Embedding", "source=zoo:digits-mlp-finetune&layer=layers.1")
    wait_title(page, "PCA of shared-basis coordinates")
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=re.compile(r"^Colour by$"))
    box.get_by_role("combobox").click()
    page.get_by_role("option", name="task_group").click()
    page.wait_for_selector(".js-plotly-plot .legend .traces >> nth=5", state="attached", timeout=60_000)
    screenshot(page, "page-embedding")
    page.get_by_text("3", exact=True).first.click()
    page.wait_for_selector(".js-plotly-plot .gl-container canvas, .js-plotly-plot .scene", timeout=60_000)
    screenshot(page, "page-embedding-3d")


def test_generalization_redraws_on_layer_change(streamlit_server, page):
    open_page(page, streamlit_server, "Generalization", DIGITS)
    wait_title(page, "layers.1: energy of models")
    wait_title(page, "Accuracy of models projected")
    screenshot(page, "page-generalization")
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=re.compile(r"^Layer$"))
    box.get_by_role("combobox").click()
    page.get_by_role("option", name="layers.0 (128×64)").click()
    wait_title(page, "layers.0: energy of models")


def test_report_html_draws_offline(browser, tmp_path):
    """The report opens from file:// with every figure drawn and no network request."""
    import subprocess
    import sys

    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "explorer", "report", "zoo:planted", "--layer", "layers.0",
                    "--out", str(out), "--quiet"], check=True, capture_output=True)
    context = browser.new_context()
    requests: list[str] = []
    context.route("**/*", lambda route: (requests.append(route.request.url), route.continue_())
                  if route.request.url.startswith("file://") else (requests.append(route.request.url), route.abort()))
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto((out / "report.html").as_uri())
    n = pg.locator(".plotly-graph-div").count()
    pg.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n}", timeout=60_000)
    assert n >= 4
    assert not [u for u in requests if not u.startswith("file://")], requests
    assert not errors
    screenshot(pg, "report")
    context.close()


def test_embedding_lasso_selection_shows_table_and_curves(streamlit_server, page):
    open_page(page, streamlit_server, "Embedding", Q)
    wait_title(page, "PCA of shared-basis coordinates")
    plot = page.locator(".js-plotly-plot .nsewdrag").first
    box = plot.bounding_box()
    assert box is not None
    # Lasso (the figure's drag mode) around the whole plot area: every point is selected.
    x0, y0, x1, y1 = box["x"] + 2, box["y"] + 2, box["x"] + box["width"] - 2, box["y"] + box["height"] - 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in ((x1, y0), (x1, y1), (x0, y1), (x0, y0 + 1)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()
    page.get_by_text("24 selected models").wait_for(timeout=60_000)
    wait_title(page, "Captured energy of the selected models vs the rest")
    screenshot(page, "embedding-selection")
