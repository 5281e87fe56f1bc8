"""Broken and hostile inputs: one clear message through the library, the CLI and the app.

The corpus (tests/hostile.py, >= 30 inputs, generated here) covers truncated and malformed
safetensors, NaN/Inf and empty tensors, folders and symlink loops, a code-running pickle,
broken PEFT adapters and sharded indexes, mixed shapes, malformed Hub ids and manifests.
Every input must raise an ExplorerError whose single line names the file/tensor (library),
exit 2 with one stderr line and no traceback (CLI), and show ``st.error`` with the app still
usable (AppTest, a representative subset) — and leave no result in the cache.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from explorer import cli
from explorer.catalog.groups import build_catalog
from explorer.core.errors import ExplorerError, InputError
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache
from explorer.sources.resolve import load_family
from tests.hostile import LAYER, corpus, evil_pickle

ROOT = Path(__file__).resolve().parents[1]
_CORPUS_DIR = Path(tempfile.mkdtemp(prefix="hostile-corpus-"))
CASES = corpus(_CORPUS_DIR / "c")
MARKER = _CORPUS_DIR / "c" / "PWNED"
# The app part runs a representative subset (AppTest costs seconds per run).
APP_CASES = ["truncated_data", "invalid_json", "pickle_code_pt", "adapter_r0", "nan_tensor", "symlink_loop",
             "hub_traversal", "shard_missing"]
# The real `python -m explorer` subprocess for a subset; all cases go through cli.main in-process.
SUBPROCESS_CASES = ["oversized_header", "pickle_code_bin_in_folder", "nan_tensor", "hub_space"]


@pytest.fixture(scope="module", autouse=True)
def _cleanup_corpus():
    yield
    shutil.rmtree(_CORPUS_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A fresh cache root per test, and no network: HF offline, any Hub call is a failure."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("EXPLORER_SERVER_MODE", raising=False)
    import huggingface_hub

    def no_call(*a, **k):
        raise AssertionError("a Hub call was made for a malformed repo id")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_call)
    monkeypatch.setattr(huggingface_hub, "HfApi", no_call)
    return tmp_path / "cache"


def _results(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.sxr")) if cache_dir.exists() else []


def _check_message(case, msg: str) -> None:
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    assert case.expect in msg, f"{case.expect!r} not in {msg!r}"
    if case.names:
        assert case.names in msg, f"message does not name {case.names!r}: {msg!r}"
    assert "Traceback" not in msg


def test_corpus_is_large_and_covers_every_kind():
    assert len(CASES) >= 30
    for needle in ("truncated", "header_past_eof", "oversized_header", "invalid_json", "overlapping", "out_of_range",
                   "dtype_mismatch", "shape_mismatch", "nan", "inf", "zero_size", "duplicate", "non_utf8",
                   "empty_folder", "symlink_loop", "pickle_code", "adapter_config_missing", "adapter_config_invalid",
                   "adapter_r0", "mixed_shapes", "shard_missing", "hub_"):
        assert any(needle in cid for cid in CASES), needle


@pytest.mark.parametrize("cid", sorted(CASES))
def test_library_raises_one_clear_explorer_error(cid, _isolated):
    case = CASES[cid]
    with pytest.raises(ExplorerError) as info:
        fam = load_family(case.source)
        build_catalog(fam)
        if case.command == "analyze":
            analyze_cached(fam, LAYER, cache=ResultCache())
    _check_message(case, str(info.value))
    assert isinstance(info.value, InputError) or case.command == "analyze"
    assert not _results(_isolated), "a failed input left a result in the cache"
    assert not MARKER.exists(), "the pickle payload ran"


def _cli_argv(case, cache_dir: Path) -> list[str]:
    argv = ["--quiet", case.command, case.source]
    if case.command == "analyze":
        argv += ["--layer", LAYER, "--cache-dir", str(cache_dir / "results")]
    return argv


@pytest.mark.parametrize("cid", sorted(CASES))
def test_cli_exits_2_with_one_line(cid, _isolated):
    case = CASES[cid]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(_cli_argv(case, _isolated))
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert rc == 2, err.getvalue()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    _check_message(case, lines[0])
    assert not _results(_isolated)


def test_cli_subprocess_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "EXPLORER_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}

    def run(cid: str) -> tuple[str, subprocess.CompletedProcess]:
        argv = [sys.executable, "-m", "explorer"] + _cli_argv(CASES[cid], tmp_path / "cache")
        return cid, subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)

    # Two at a time: each process imports torch; more would only queue on a 2-core machine.
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(run, SUBPROCESS_CASES))
    for cid, proc in done:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, (cid, proc.stderr)
        assert len(lines) == 1, (cid, proc.stderr)
        _check_message(CASES[cid], lines[0])
    assert not _results(tmp_path / "cache")
    assert not MARKER.exists()


def test_pickle_payload_is_live_but_never_runs(tmp_path):
    """The payload does run under a plain unpickler (so the test means something); ours refuses it."""
    marker = tmp_path / "ran"
    evil = evil_pickle(tmp_path / "live.pt", marker)
    with pytest.raises(InputError, match="weights_only"):
        load_family(str(evil))
    assert not marker.exists()
    code = f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert marker.exists(), "the hostile pickle should run code when loaded without weights_only"


@pytest.mark.parametrize("name", ["../../escape.safetensors", "/etc/passwd", "a/../../b.safetensors"])
def test_upload_paths_cannot_escape(name, _isolated):
    from explorer.sources.upload import upload_dir

    with pytest.raises(InputError, match="not a plain relative file name"):
        upload_dir([(name, b"x")])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, b"x")
    with pytest.raises(InputError, match="not a plain relative file name"):
        upload_dir([("slip.zip", buf.getvalue())])
    assert not (Path("/") / "escape.safetensors").exists()


def test_nul_in_source_is_refused():
    with pytest.raises(InputError, match="NUL"):
        load_family("/tmp/a\0b")


# ----------------------------------------------------------------------------- the app
@pytest.fixture(scope="module")
def app_cache():
    """One cache root for the app tests, with the built zoo linked in (so picking zoo:planted is quick)."""
    from explorer.core.paths import cache_root

    real_zoo = cache_root() / "zoo"
    d = Path(tempfile.mkdtemp(prefix="hostile-app-"))
    (d / "zoo").parent.mkdir(parents=True, exist_ok=True)
    if real_zoo.is_dir():
        os.symlink(real_zoo, d / "zoo")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("cid", APP_CASES)
def test_app_shows_st_error_and_stays_usable(cid, app_cache, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(app_cache))
    case = CASES[cid]
    before = _results(app_cache / "results")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page("pages/1_Spectrum.py")
    at.query_params.update(source=case.source)
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any(case.expect in e for e in errors), errors
    assert all("Traceback" not in e for e in errors)
    assert _results(app_cache / "results") == before, "a failed input left a result in the cache"
    # The sidebar still works: pick the built-in zoo and the chart comes back.
    at.sidebar.radio(key="w_kind").set_value("Built-in zoo").run()
    at.sidebar.selectbox(key="w_zoo").set_value("zoo:planted").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 1
    assert not MARKER.exists()
