"""The atlas: every layer group of a family with its verdict, in the CLI (JSON schema, resumable
through the cache, bad options) and in the library (Holm-adjusted verdicts, grids)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import explorer
from explorer.metrics.verdict import holm
from explorer.pipeline.atlas import ATLAS_SCHEMA, atlas_plan, run_atlas
from explorer.pipeline.cache import ResultCache
from explorer.present.atlas import atlas_grid, atlas_table

ROOT = Path(__file__).resolve().parents[1]
ENTRY_KEYS = {"layer", "index", "module", "view", "mode", "center", "n_models", "k_at", "top1_evr", "topk_evr",
              "null_top1_evr", "null_topk_evr", "cache_key", "verdict", "shared_init"}
VERDICT_KEYS = {"label", "k", "observed", "null_median", "p_value", "p_raw", "effect", "effect_ci", "heldout_ratio",
                "mean_ratio", "summary", "notes"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explorer", "--quiet", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_atlas_json_schema_and_table(tmp_path):
    out = tmp_path / "atlas.json"
    proc = run_cli("atlas", "zoo:digits-lora", "--views", "A,B", "--json", str(out), "--out", str(tmp_path / "dir"),
                   "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == ATLAS_SCHEMA and doc["n_models"] == 120 and len(doc["entries"]) == 6
    for e in doc["entries"]:
        assert set(e) == ENTRY_KEYS and set(e["verdict"]) == VERDICT_KEYS
        assert e["mode"] == {"A": "in", "B": "out"}[e["view"]]
        assert e["verdict"]["label"] == "shared" and e["verdict"]["p_value"] < 0.05
        assert e["verdict"]["p_value"] >= e["verdict"]["p_raw"]  # Holm only raises p-values
    # The zoo's 60 adapters from one A init are found, and judged within their cluster.
    init = doc["entries"][0]["shared_init"]
    assert init["sizes"][0] >= 55 and [c["cluster"] for c in init["within"]] == ["shared init 1", "independent inits"]
    assert all(c["verdict"]["label"] == "shared" for c in init["within"])
    assert (tmp_path / "dir" / "atlas.csv").read_text().startswith("layer,index,module,view")
    assert json.loads((tmp_path / "dir" / "atlas.json").read_text()) == doc
    assert "layers.1" in proc.stdout and "shared" in proc.stdout and "Holm" in proc.stdout


def test_cli_atlas_bad_options_exit_2(tmp_path):
    for args, needle in ((("--modules", "("), "not a regular expression"), (("--modules", "nope"), "matching 'nope'"),
                         (("--views", "A,X"), "--views"), (("--k", "0"), "--k must be")):
        proc = run_cli("atlas", "zoo:planted", *args, "--cache-dir", str(tmp_path))
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_atlas_resumes_through_the_cache_and_filters_modules(tmp_path):
    fam = explorer.load_family("zoo:planted")
    cache = ResultCache(tmp_path)
    plan = atlas_plan(fam, "layers\\.[01]$", ("full",))
    assert [(g.name, v) for g, v in plan] == [("layers.0", "full"), ("layers.1", "full")]
    # Half an atlas, then the whole: the first half comes from the cache.
    run_atlas(fam, "layers\\.0$", ("full",), cache=cache)
    atlas = run_atlas(fam, None, ("full",), cache=cache)
    hits = {e.group.name: e.analysis.from_cache for e in atlas.entries}
    assert hits["layers.0"] and not hits["layers.1"]
    again = run_atlas(fam, None, ("full",), cache=cache)
    assert all(e.analysis.from_cache for e in again.entries)
    assert [e.verdict.summary for e in again.entries] == [e.verdict.summary for e in atlas.entries]


def test_atlas_verdicts_are_holm_adjusted_and_gridded(tmp_path):
    atlas = run_atlas(explorer.load_family("zoo:planted"), cache=ResultCache(tmp_path))
    raw = np.array([e.verdict.p_raw for e in atlas.entries])
    np.testing.assert_allclose([e.verdict.p_value for e in atlas.entries], holm(raw))
    grid = atlas_grid(atlas, "full", "effect")
    assert grid.modules == ["layers.{i}"] and grid.layers == [str(e.group.index) for e in atlas.entries]
    np.testing.assert_allclose(grid.values[:, 0], [e.verdict.effect for e in atlas.entries])
    assert list(grid.groups[:, 0]) == [e.group.name for e in atlas.entries]
    table = atlas_table(atlas)
    assert list(table["verdict"]) == [e.verdict.label for e in atlas.entries]
    with pytest.raises(KeyError):
        atlas_grid(atlas, "full", "nope")
