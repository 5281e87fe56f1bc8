"""Hostile and odd input through the app (AppTest) and the CLI: named, never silent, never a traceback.

- members left out of an analysis are listed in one ``st.warning`` above the charts, on every
  page; the sidebar's *Strict* toggle (``strict=1`` in a link) turns them into one ``st.error``;
- share-link values the app cannot honour are named in one ``st.warning`` each, with what is
  shown instead;
- the crash cases of issue 16 (``tau=nan``, a group with fewer than 4 eigenvalues, a layer with a
  dimension of 1, a path component over 255 bytes) give a chart or one clear line;
- uncaught exceptions show no details in the browser and are logged on the server with their
  traceback.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from tests.helpers import figure_json, trace, write_family
from tests.hostile import LAYER, corpus, member_family

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))
LONG = "a" * 300  # one path component over the 255-byte limit of Linux file systems


def start(page: str, **query) -> AppTest:
    """Open ``page`` cold in a fresh session with ``query`` (as a share link would)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(page)
    at.query_params.update(query)
    return at.run()


def ok(at: AppTest) -> None:
    """No traceback, no error, and at least one chart."""
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart")


def _nan_file(path: Path, shape=(4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = torch.randn(*shape)
    w[0, 0] = float("nan")
    save_file({"layers.0.weight": w}, str(path))
    return path


@pytest.fixture
def cache_dir(monkeypatch, tmp_path):
    """A fresh result cache for local families (the zoo is not used by these tests)."""
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def two_bad(tmp_path, cache_dir):
    """Four good models, one truncated file (skipped on load) and one NaN member (skipped on read)."""
    rng = np.random.default_rng(1)
    folder = write_family(tmp_path / "fam_bad", {f"good{i}": rng.standard_normal((4, 3)) for i in range(4)})
    (folder / "broken_model.safetensors").write_bytes(b"\x01\x02\x03")
    _nan_file(folder / "nan_model.safetensors")
    return folder


@pytest.fixture(scope="module")
def members():
    """tests/hostile.py's member family: 3 good models beside every member-kind hostile case."""
    d = Path(tempfile.mkdtemp(prefix="app-hostile-"))
    yield member_family(d, corpus(d / "c"))
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ skipped members and strict
@pytest.mark.parametrize("page", PAGES)
def test_skipped_members_are_listed_in_one_warning_on_every_page(page, two_bad):
    at = start(page, source=str(two_bad), layer="layers.0")
    ok(at)
    assert len(at.warning) == 1, [w.value for w in at.warning]
    text = at.warning[0].value
    assert "2 members of this family were left out" in text
    for name in ("broken_model", "nan_model"):
        assert f"**{name.replace('_', chr(92) + '_')}**" in text  # the name, escaped for Markdown
        assert str(two_bad / f"{name}.safetensors").replace("_", "\\_") in text
    assert "holds NaN or Inf" in text
    # The charts are of the good models only.
    assert at.sidebar.caption[0].value.startswith("5 dense models")


def test_every_hostile_member_is_named_beside_the_charts(members, cache_dir):
    fam_dir, cases = members
    at = start("pages/1_Spectrum.py", source=str(fam_dir), layer=LAYER)
    ok(at)
    assert len(at.warning) == 1
    assert f"{len(cases)} members of this family were left out" in at.warning[0].value
    # Beyond a few, they are collapsed into an expander holding a table: member, file, reason.
    table = next(d.value for d in at.dataframe if list(d.value.columns) == ["member", "file", "reason"])
    assert sorted(table["member"]) == sorted(cases)
    rows = table.set_index("member")
    for cid, m in cases.items():
        assert rows.loc[cid, "file"] == m.path and m.expect in rows.loc[cid, "reason"], (cid, rows.loc[cid].tolist())
    assert any(e.label.startswith(f"{len(cases)} skipped members") for e in at.expander)


def test_strict_toggle_refuses_the_family_with_one_error(two_bad):
    at = start("pages/1_Spectrum.py", source=str(two_bad), layer="layers.0")
    ok(at)
    at.sidebar.toggle(key="w_strict").set_value(True).run()
    assert not at.exception
    assert len(at.error) == 1 and "broken_model" in at.error[0].value, [e.value for e in at.error]
    assert not at.get("plotly_chart") and not at.warning
    # Off again: the good models are analysed, the bad ones listed.
    at.sidebar.toggle(key="w_strict").set_value(False).run()
    ok(at)
    assert len(at.warning) == 1


def test_strict_from_a_link_refuses_nan_found_while_reading(tmp_path, cache_dir):
    # Only reading the data shows the NaN: the family loads, the analysis refuses it.
    rng = np.random.default_rng(2)
    folder = write_family(tmp_path / "fam_nan", {f"good{i}": rng.standard_normal((4, 3)) for i in range(4)})
    _nan_file(folder / "nan_model.safetensors")
    at = start("pages/2_Overlap.py", source=str(folder), layer="layers.0", strict="1")
    assert not at.exception
    assert at.sidebar.toggle(key="w_strict").value is True
    assert len(at.error) == 1 and "nan_model" in at.error[0].value and "NaN" in at.error[0].value
    assert not at.warning and not at.get("plotly_chart")
    assert at.query_params["strict"] in ("1", ["1"])


# ------------------------------------------------------------------ share links not honoured
LINK_CASES = [
    # (query, parameter, value, what is shown instead)
    ({"source": "zoo:no-such-family", "layer": "layers.0"}, "source", "zoo:no-such-family", None),
    ({"layer": "layers.9"}, "layer", "layers.9", "layers.0"),
    ({"view": "A"}, "view", "A", "full"),
    ({"mode": "sideways"}, "mode", "sideways", "out"),
    ({"center": "median"}, "center", "median", "none"),
    ({"tau": "nan"}, "tau", "nan", "0.9"),
    ({"tau": "abc"}, "tau", "abc", "0.9"),
    ({"tau": "1.5"}, "tau", "1.5", "0.99"),
    ({"k": "abc"}, "k", "abc", "8"),
    ({"k": "5"}, "k", "5", "4"),
    ({"strict": "maybe"}, "strict", "maybe", "0"),
]


@pytest.mark.parametrize("query, field, value, used", LINK_CASES, ids=[f"{c[1]}={c[2]}" for c in LINK_CASES])
def test_a_share_link_value_not_honoured_is_named(query, field, value, used):
    at = start("pages/1_Spectrum.py", **{"source": "zoo:planted", "layer": "layers.0", **query})
    ok(at)
    notes = [w.value for w in at.warning if f"**{field}** = `{value}`" in w.value]
    assert len(notes) == 1, [w.value for w in at.warning]
    if used is not None:
        assert notes[0].endswith(f"showing `{used}` instead.")
    # Reported on the run that opened the link, not on every rerun.
    at.run()
    assert not at.warning


def test_tau_nan_falls_back_to_the_default():
    at = start("pages/1_Spectrum.py", source="zoo:planted", layer="layers.0", tau="nan")
    ok(at)
    assert at.sidebar.slider(key="w_tau").value == pytest.approx(0.9)
    assert at.query_params["tau"] in ("0.9", ["0.9"])


def test_an_honoured_link_draws_no_warning():
    at = start("pages/1_Spectrum.py", source="zoo:planted", layer="layers.1", view="full", mode="in",
               center="model", tau="0.8", k="16")
    ok(at)
    assert not at.warning, [w.value for w in at.warning]


def test_a_local_path_in_server_mode_is_named_not_replaced_silently(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_SERVER_MODE", "1")
    monkeypatch.delenv("EXPLORER_ALLOWED_ROOTS", raising=False)
    folder = write_family(tmp_path / "private", {f"m{i}": np.eye(4, 3) * (i + 1) for i in range(3)})
    at = start("pages/1_Spectrum.py", source=str(folder), layer="layers.0")
    ok(at)
    note = next(w.value for w in at.warning if "**source**" in w.value)
    assert str(folder).replace("_", "\\_") in note and "server mode offers no local path sources" in note


# ------------------------------------------------------------------ crash cases
def test_a_group_with_fewer_than_4_eigenvalues(tmp_path, cache_dir):
    rng = np.random.default_rng(3)
    folder = write_family(tmp_path / "small", {f"m{i}": rng.standard_normal((3, 5)) for i in range(5)})
    at = start("pages/1_Spectrum.py", source=str(folder), layer="layers.0")
    ok(at)
    assert at.number_input(key="spectrum_ncomp").value == 3
    scree = figure_json(at.get("plotly_chart")[0])
    assert len(trace(scree, "EVR per component")["y"]) == 3
    # Two models in model mode: a 2 x 2 Gram, two components on every page.
    two = write_family(tmp_path / "two", {f"m{i}": rng.standard_normal((6, 5)) for i in range(2)})
    for page in ("pages/1_Spectrum.py", "pages/4_Generalization.py"):
        ok(start(page, source=str(two), layer="layers.0", mode="model"))


@pytest.mark.parametrize("page", PAGES)
def test_a_layer_with_a_dimension_of_1(page, tmp_path, cache_dir):
    rng = np.random.default_rng(4)
    folder = write_family(tmp_path / "dim1", {f"m{i}": rng.standard_normal((1, 5)) for i in range(5)})
    at = start(page, source=str(folder), layer="layers.0", mode="out")
    ok(at)
    if page.endswith("1_Spectrum.py"):
        y = trace(figure_json(at.get("plotly_chart")[0]), "EVR per component")["y"]
        np.testing.assert_allclose(y, [1.0])


# ------------------------------------------------------------------ error details
def test_error_details_are_hidden_in_the_browser_and_logged_on_the_server(capfd):
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none" and config["logger"]["enableRich"] is False

    def script():
        import streamlit as st

        st.write("before")
        raise RuntimeError("unexpected kaboom")

    # Streamlit's console handler keeps the stderr of the test that created it: point it at this one's.
    handler = logging.getLogger("streamlit.error_util").streamlit_console_handler
    before = handler.setStream(sys.stderr)
    try:
        at = AppTest.from_function(script).run()
    finally:
        handler.setStream(before)
    (exc,) = at.exception
    assert "kaboom" not in exc.message and not exc.stack_trace and "redacted" in exc.message
    err = capfd.readouterr().err
    assert "Uncaught app execution" in err and "Traceback" in err and "RuntimeError: unexpected kaboom" in err


# ------------------------------------------------------------------ the same inputs through the CLI
def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EXPLORER_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "explorer", "--quiet", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_cli_analyses_a_layer_with_a_dimension_of_1(tmp_path):
    rng = np.random.default_rng(5)
    folder = write_family(tmp_path / "dim1", {f"m{i}": rng.standard_normal((1, 5)) for i in range(5)})
    for mode, n in (("out", 1), ("in", 5), ("model", 5)):
        out = cli("analyze", str(folder), "--layer", "layers.0", "--mode", mode, "--json", str(tmp_path / f"{mode}.json"),
                  cache=tmp_path / "cache")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        res = json.loads((tmp_path / f"{mode}.json").read_text())
        assert len(res["evr"]) == n and res["evr"][0] <= 1.0 + 1e-12
    one = json.loads((tmp_path / "out.json").read_text())
    np.testing.assert_allclose(one["evr"], [1.0])


def test_cli_refuses_a_path_component_over_255_bytes_with_one_line(tmp_path):
    good = write_family(tmp_path / "good", {f"m{i}": np.eye(4, 3) * (i + 1) for i in range(3)})
    sources = [tmp_path / LONG, tmp_path / f"{LONG}.safetensors", tmp_path / "x" / LONG / "y", tmp_path / f"{LONG}.yaml"]
    for src in sources:
        out = cli("analyze", str(src), "--layer", "layers.0", cache=tmp_path / "cache")
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (src, out.returncode, out.stderr[-500:])
        assert str(src) in lines[0] and "at most 255 bytes" in lines[0]
    out = cli("analyze", str(good), "--layer", "layers.0", "--base", str(tmp_path / LONG), cache=tmp_path / "cache")
    assert out.returncode == 2 and "base" in out.stderr and "Traceback" not in out.stderr


def test_cli_names_a_shard_over_255_bytes_as_a_skipped_member(tmp_path):
    folder = write_family(tmp_path / "fam", {f"m{i}": np.eye(4, 3) * (i + 1) for i in range(3)})
    sharded = folder / "sharded"
    sharded.mkdir()
    save_file({"layers.0.weight": torch.ones(4, 3)}, str(sharded / "model-00001-of-00001.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"layers.0.weight": f"{LONG}.safetensors"}}))
    out = cli("analyze", str(folder), "--layer", "layers.0", cache=tmp_path / "cache")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("skipped: sharded: ")]
    out = cli("analyze", str(folder), "--layer", "layers.0", "--strict", cache=tmp_path / "cache")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "at most 255 bytes" in out.stderr
