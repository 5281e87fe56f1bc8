"""Fixtures shared by the whole suite: tiny families on disk, a live Streamlit server, Chromium."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_family

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def family_factory(tmp_path):
    """Write small families to tmp_path: ``family_factory(name, matrices, labels=None) -> folder``."""

    def make(name: str, matrices, labels=None, **kw) -> Path:
        return write_family(tmp_path / name, matrices, labels, **kw)

    return make


@pytest.fixture
def random_family(family_factory):
    """A 6-model family of iid Gaussian 12x9 and 7x12 layers, labelled by group."""
    rng = np.random.default_rng(0)
    mats = {f"m{i}": {"layers.0.weight": rng.standard_normal((12, 9)), "layers.1.weight": rng.standard_normal((7, 12))}
            for i in range(6)}
    labels = {f"m{i}": {"group": "ab"[i % 2], "seed": i} for i in range(6)}
    return family_factory("random", mats, labels)


# --------------------------------------------------------------------------- browser tests
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium; missing means skip locally, but fail in CI (no browser test skipped there)."""
    if not chromium_available():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}: .ci/run must install Debian's chromium")
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    return CHROMIUM


@pytest.fixture(scope="session")
def streamlit_server():
    """Start ``streamlit run app.py`` on a free port on 127.0.0.1; yield its base URL."""
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # start-up wait, not a performance assertion
    while True:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not become healthy; see {log.name}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


_BASE_PATH_PROBES = ("/_stcore/health", "/_stcore/host-config")


@pytest.fixture
def page(browser, request):
    """A fresh browser page that records console errors; the test fails if any occurred."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []

    def on_console(msg) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        # Opened at /PageName, Streamlit's frontend first probes /PageName/_stcore/{health,host-config}
        # to discover its base path, gets 404, then uses the root: expected, not an app error.
        if "404" in msg.text and any(url.endswith(p) for p in _BASE_PATH_PROBES):
            return
        errors.append(f"{msg.text} ({url})" if url else msg.text)

    pg.on("console", on_console)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.console_errors = errors
    yield pg
    context.close()
    assert not errors, f"browser console errors in {request.node.name}: {errors}"


def screenshot_dir() -> Path:
    out = ARTIFACTS / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def screenshot(pg, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/screenshots/."""
    path = screenshot_dir() / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def pytest_collection_modifyitems(config, items):
    """Run browser tests last, so the live server and Chromium are not held through the suite."""
    items.sort(key=lambda it: it.get_closest_marker("browser") is not None)


@pytest.fixture(scope="session")
def umap_points():
    """UMAP of the planted family's shared-basis coordinates, computed once per test session.

    UMAP pays ~15 s of numba compilation in every new process, so every UMAP test shares this.
    """
    import explorer
    from explorer.present.embedding import embed

    res = explorer.analyze_cached("zoo:planted", "layers.0")
    return res, embed(res.metrics.coords, "umap", 2, seed=0)
