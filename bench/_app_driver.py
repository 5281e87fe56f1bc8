"""What bench/load_test.py and bench/kill_test.py share: the app's server, Chromium, and watchers.

- :func:`make_cache_root`: a fresh cache root (``EXPLORER_CACHE_DIR``) in a temporary folder, its
  ``zoo`` a symlink to the built zoo (nothing is retrained), its ``results`` empty;
- :class:`Server`: ``streamlit run app.py`` on 127.0.0.1 with that cache root, started, stopped or
  SIGKILLed;
- :class:`MemorySampler`: the server's resident memory (``/proc/PID/status``): the kernel's own
  peak (``VmHWM``) and the largest ``VmRSS`` sampled, children included;
- :class:`EntryWatcher`: how many times each cache entry was written, counted with Linux inotify
  (each write of ``explorer.pipeline.cache`` is one rename onto ``results/<key[:2]>/<key>.sxr``);
- :func:`check_entries`: every entry on disk read back and checked for its key, as the app does;
- Debian's Chromium through Playwright's async API (never ``playwright install``), and the waits
  for a page's first chart and for its script to finish.

Linux only (``/proc``, inotify).  The scripts are measurements, not tests: nothing here asserts a time.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explorer.core.paths import zoo_root  # noqa: E402
from explorer.pipeline.cache import decode  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = ("Spectrum", "Overlap", "Embedding", "Generalization")
CHART = ".js-plotly-plot .main-svg"
ERROR = '[data-testid="stAlertContentError"], [data-testid="stException"]'
PROGRESS = '[data-testid="stProgress"]'
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# Opened at /PageName, Streamlit's frontend first probes /PageName/_stcore/{health,host-config}
# and gets 404 before it finds its base path: expected, not an app error (as in tests/conftest.py).
_BASE_PATH_PROBES = ("/_stcore/health", "/_stcore/host-config")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_cache_root(parent: Path) -> Path:
    """``parent/cache``: ``zoo`` → the built zoo (:func:`explorer.core.paths.zoo_root`), ``results``
    with its 256 key-prefix folders made up front (so :class:`EntryWatcher` watches each from the start)."""
    root = parent / "cache"
    root.mkdir(parents=True)
    (root / "zoo").symlink_to(zoo_root().resolve(), target_is_directory=True)
    for i in range(256):
        (root / "results" / f"{i:02x}").mkdir(parents=True)
    return root


def built_zoo_families() -> list[str]:
    """``zoo:NAME`` of every zoo family already built (the bench never trains one)."""
    from explorer.zoo import registry

    return [f"zoo:{rc.name}" for rc in registry.list_recipes() if registry.is_built(rc.name)]


def layer_names(source: str) -> list[str]:
    """The family's layer groups that every model holds (from file headers only)."""
    from explorer import build_catalog, load_family

    return [g.name for g in build_catalog(load_family(source), complete_only=True)]


class Server:
    """``streamlit run app.py`` on 127.0.0.1:``port`` with ``EXPLORER_CACHE_DIR=cache_root``; log in ``log``."""

    def __init__(self, port: int, cache_root: Path, log: Path, server_mode: bool = False):
        self.port, self.cache_root, self.log, self.server_mode = port, cache_root, log, server_mode
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> float:
        """Start the server and wait until ``/_stcore/health`` answers; return the seconds it took."""
        env = {**os.environ, "EXPLORER_CACHE_DIR": str(self.cache_root), "PYTHONUNBUFFERED": "1"}
        if self.server_mode:
            env["EXPLORER_SERVER_MODE"] = "1"
        t0 = time.monotonic()
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                 "--server.port", str(self.port), "--server.address", "127.0.0.1", "--server.headless", "true",
                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"streamlit did not become healthy on port {self.port}; see {self.log}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the server (no clean-up runs) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    kids = [int(c) for c in fh.read().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


class MemorySampler(threading.Thread):
    """Samples the resident memory of ``pid`` and its children every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_sampled_kib = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = sum(_status_kib(p, "VmRSS") for p in [self.pid, *_descendants(self.pid)])
            self.peak_sampled_kib = max(self.peak_sampled_kib, rss)
            self._stop_event.wait(self.interval)

    def finish(self) -> tuple[float, float]:
        """Stop sampling (call while the server still runs); return (VmHWM MiB, peak sampled MiB)."""
        hwm = _status_kib(self.pid, "VmHWM")
        self._stop_event.set()
        self.join()
        return hwm / 1024, self.peak_sampled_kib / 1024


class EntryWatcher:
    """Counts writes of each cache entry under ``results`` (made by :func:`make_cache_root`).

    An entry is written to a temporary file and renamed onto ``<key[:2]>/<key>.sxr``; inotify
    reports every rename (``IN_MOVED_TO``), however close two of them come, so a key computed
    twice is counted twice.
    """

    IN_MOVED_TO = 0x80

    def __init__(self, results: Path):
        self.writes: Counter[str] = Counter()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for sub in sorted(results.iterdir()):
            if len(sub.name) == 2 and self._libc.inotify_add_watch(self._fd, bytes(sub), self.IN_MOVED_TO) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {sub}")
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            off = 0
            while off + 16 <= len(data):
                _wd, _mask, _cookie, n = struct.unpack_from("iIII", data, off)
                name = data[off + 16 : off + 16 + n].rstrip(b"\0").decode()
                off += 16 + n
                if name.endswith(".sxr"):
                    self.writes[name[:-4]] += 1

    def _run(self) -> None:
        while not self._stop_event.is_set():
            select.select([self._fd], [], [], 0.2)
            self._drain()

    def close(self) -> Counter[str]:
        self._stop_event.set()
        self._thread.join()
        self._drain()
        os.close(self._fd)
        return self.writes


def check_entries(results: Path) -> dict[str, list]:
    """Every entry under ``results`` read back as the app reads it (checksum and key).

    Returns ``{"valid": [key...], "damaged": [key...], "tmp": [path...], "locked": [key...]}``:
    ``tmp`` are temporary files a killed writer left (never served), ``locked`` the keys whose
    computation started (a per-key lock file exists).
    """
    out: dict[str, list] = {"valid": [], "damaged": [], "tmp": [], "locked": []}
    for p in sorted(results.glob("??/*")):
        if p.name.endswith(".sxr"):
            key = p.name[:-4]
            out["valid" if decode(p.read_bytes(), key) is not None else "damaged"].append(key)
        else:
            out["tmp"].append(str(p.relative_to(results)))
    out["locked"] = sorted(p.name[:-5] for p in (results / "locks").glob("*.lock"))
    return out


def entry_label(results: Path, key: str) -> str:
    """``source · layer · view · mode-mode`` of a valid entry, read from its metadata."""
    got = decode((results / key[:2] / f"{key}.sxr").read_bytes(), key)
    if got is None:
        return "(damaged)"
    meta = got[1]
    return f"{meta['source']} · {meta['group']['name']} · {meta['view']} · {meta['options'].get('mode')}-mode"


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --------------------------------------------------------------------------- browser
async def launch_browser(pw):
    """Debian's Chromium, headless, with the flags of the test suite."""
    return await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


async def new_page(browser) -> tuple:
    """A fresh context and page; the page's console and page errors are collected in its list."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    errors: list[str] = []

    def on_console(msg) -> None:
        url = (msg.location or {}).get("url", "")
        if msg.type == "error" and not ("404" in msg.text and url.endswith(_BASE_PATH_PROBES)):
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return context, page, errors


async def wait_chart(page, timeout_s: float) -> str:
    """Wait for the first drawn chart or error; return ``"chart"``, ``"error"`` or ``"timeout"``."""
    try:
        await page.wait_for_selector(f"{CHART}, {ERROR}", timeout=timeout_s * 1000)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError (or a closed page): nothing shown
        return "timeout"
    return "chart" if await page.locator(CHART).count() else "error"


async def toggle_log_axis(page, timeout_s: float) -> float:
    """Switch the Spectrum page's "Log scale" toggle on; seconds until the scree is redrawn on a log axis.

    A rerun of the whole page script in an open session (every analysis a hit): what a user waits
    for on a page whose results are cached, without the browser's own start-up.
    """
    t0 = time.perf_counter()
    await page.get_by_text("Log scale", exact=True).click()
    await page.wait_for_function(
        "() => { const g = document.querySelector('.js-plotly-plot');"
        " return g && g.layout && g.layout.yaxis && g.layout.yaxis.type === 'log'; }",
        timeout=timeout_s * 1000)
    return time.perf_counter() - t0


async def wait_idle(page, timeout_s: float) -> bool:
    """Wait until the page's script has finished its run (Streamlit's ``notRunning`` state)."""
    try:
        await page.wait_for_selector(IDLE, state="attached", timeout=timeout_s * 1000)
        return True
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError
        return False


async def count(page, selector: str) -> int:
    return await page.locator(selector).count()


def print_table(headers: list[str], rows: list[list], left: int = 1) -> None:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
