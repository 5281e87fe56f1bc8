"""Playwright + Debian Chromium: every page really draws its charts in a browser."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import screenshot

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
PAGES = {"home": ""} | {p.stem.split("_", 1)[1].lower(): p.stem.split("_", 1)[1] for p in sorted((ROOT / "pages").glob("*.py"))}
PLOT = ".js-plotly-plot .main-svg"


def open_page(page, base: str, path: str, query: str = ""):
    page.goto(f"{base}/{path}{'?' + query if query else ''}")
    page.wait_for_selector(PLOT, timeout=120_000)
    # Plotly draws bars/lines as SVG paths inside the plot area.
    page.wait_for_selector(f"{PLOT} .plot path, {PLOT} .plot .point, {PLOT} .bars path", timeout=60_000)


def test_non_home_page_opened_first_on_a_fresh_server(streamlit_server, page):
    # A deep link straight to a page, before any other page has run on this server.
    open_page(page, streamlit_server, "Spectrum", "source=zoo:planted&layer=layers.2&mode=in")
    assert page.locator(PLOT).count() >= 1
    assert page.get_by_text("Spectrum").first.is_visible()
    screenshot(page, "deep-link-spectrum")


@pytest.mark.parametrize("name", list(PAGES))
def test_page_draws_chart(streamlit_server, page, name):
    open_page(page, streamlit_server, PAGES[name])
    bars = page.locator(f"{PLOT} .bars path")
    assert bars.count() > 0
    screenshot(page, f"page-{name}")


def test_widget_change_redraws_scree(streamlit_server, page):
    open_page(page, streamlit_server, "Spectrum", "source=zoo:planted&layer=layers.0")
    title = page.locator(f"{PLOT} .gtitle").first.text_content()
    assert "layers.0" in title
    page.get_by_role("radiogroup").get_by_text("in — input space (rows)").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(e => e.textContent.includes('in-mode'))",
        timeout=60_000,
    )
    screenshot(page, "spectrum-in-mode")
