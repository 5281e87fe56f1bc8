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


IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def wait_idle(page) -> None:
    """Wait until the page's script has finished its run (a rerun re-renders, closing any open popover)."""
    page.wait_for_selector(IDLE, state="attached", timeout=120_000)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``, reopening it if a rerun closed its list.

    Streamlit may still be running the page (a fragment, a late cached call) when the charts appear;
    its rerun redraws the sidebar and closes the dropdown, so the option never shows. Wait for the
    idle state before each try, and retry the opening a few times rather than wait 30 s once.
    """
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=re.compile(rf"^{re.escape(label)}$"))
    target = page.get_by_role("option", name=option)
    for attempt in range(5):
        wait_idle(page)
        box.get_by_role("combobox").click()
        try:
            target.wait_for(state="visible", timeout=8_000)
            target.click(timeout=8_000)
            return
        except Exception:
            if attempt == 4:
                raise
            page.keyboard.press("Escape")


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


def test_export_files_are_made_on_click_one_after_another(streamlit_server, page):
    # The export bar makes each file when its button is clicked (deferred data) and a download
    # does not rerun the page, so downloads in a row all arrive, each with its content.
    from pathlib import Path

    import yaml
    from safetensors.numpy import load as st_load

    open_page(page, streamlit_server, "Spectrum")
    wait_idle(page)
    page.get_by_text("Export", exact=True).click()
    got = {}
    for label in ("scree (HTML)", "family manifest (YAML)", "basis + coordinates (safetensors)", "layer-summary (CSV)"):
        with page.expect_download(timeout=120_000) as info:
            page.get_by_role("button", name=label).first.click()
        got[info.value.suggested_filename] = Path(info.value.path()).read_bytes()
    html = got["spectrum-scree.html"]
    assert html.lower().startswith(b"<!doctype html>") and b"plotly" in html and len(html) > 1_000_000
    assert yaml.safe_load(got["family.yaml"])["name"] == "zoo:planted"
    arrays = st_load(got["spectrum-layers.0-out.safetensors"])
    assert arrays["basis"].shape[0] == arrays["eigenvalues"].shape[0]
    assert got["spectrum-layer-summary.csv"].startswith(b"layer,shape,")


def test_overlap_redraws_on_tab_and_colour(streamlit_server, page):
    open_page(page, streamlit_server, "Overlap", DIGITS)
    wait_title(page, "Model × model overlap")
    page.get_by_role("tab", name="Groups").click()
    wait_title(page, "Group × group overlap")
    screenshot(page, "page-overlap")


def test_embedding_redraws_on_dimension_change(streamlit_server, page):
    open_page(page, streamlit_server, "Embedding", "source=zoo:digits-mlp-finetune&layer=layers.1")
    wait_title(page, "PCA of shared-basis coordinates")
    choose(page, "Colour by", "task_group")
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
    choose(page, "Layer", "layers.0 (128×64)")
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


@pytest.fixture(scope="module")
def mistral_shape_family(tmp_path_factory):
    """24 PEFT adapters of Mistral-7B shape (rank 16, q_proj 4096 x 4096, v_proj 1024 x 4096, bf16),
    two layers: the real family's shapes with fewer adapters (the bench times 500)."""
    import numpy as np
    import torch

    from tests.helpers import write_adapter

    root = tmp_path_factory.mktemp("mistral-shape")
    rng = np.random.default_rng(0)
    shared = np.linalg.qr(rng.standard_normal((4096, 16)))[0]
    for i in range(24):
        factors = {}
        for layer in (0, 1):
            for proj, out in (("q_proj", 4096), ("v_proj", 1024)):
                a = rng.standard_normal((16, 4096)) / 64
                b = (shared[:out] @ rng.standard_normal((16, 16))) * 0.01 + 0.002 * rng.standard_normal((out, 16))
                factors[f"model.layers.{layer}.self_attn.{proj}"] = (a, b)
        write_adapter(root / f"adapter-{i:02d}", factors, 16, 32.0, dtype=torch.bfloat16)
    return root


def test_spectrum_of_a_mistral_shape_family_by_share_link(streamlit_server, page, mistral_shape_family):
    # Opened cold by its share link: the visible group's scree first, then the other layer's
    # comparison (overlay and heatmap), with the view's own mode (B: out-mode).
    query = f"source={mistral_shape_family}&layer=model.layers.0.self_attn.q_proj&view=B"
    open_page(page, streamlit_server, "Spectrum", query)
    wait_title(page, "model.layers.0.self_attn.q_proj · B · out-mode")
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=300_000)
    assert page.locator(f"{PLOT} .bars path").count() > 0
    assert not page.locator("[data-testid='stException']").count()
    screenshot(page, "spectrum-mistral-shape")


def test_apply_page_cold_by_its_link_compresses_and_merges(streamlit_server, page):
    open_page(page, streamlit_server, "Apply", "source=zoo:digits-lora&layer=layers.1")
    wait_title(page, "Reconstruction error against k")
    wait_title(page, "Accuracy from the compressed form against k")
    screenshot(page, "page-apply")
    page.get_by_role("tab", name="Merge").click()
    wait_title(page, "Every merge on every task")
    chart = page.locator(".js-plotly-plot", has=page.locator(".gtitle", has_text="Every merge on every task")).first
    chart.scroll_into_view_if_needed()
    assert chart.locator(".bars path").count() > 0
    screenshot(page, "page-apply-merge")


def test_embedding_marks_newcomers_from_a_share_link(streamlit_server, page):
    open_page(page, streamlit_server, "Embedding",
              "source=zoo:digits-mlp-scratch&layer=layers.1&newcomer=zoo:digits-random-init")
    wait_title(page, "PCA of shared-basis coordinates")
    page.wait_for_selector(".js-plotly-plot .legend .traces >> text=newcomers", state="attached", timeout=60_000)
