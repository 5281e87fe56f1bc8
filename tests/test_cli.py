"""The CLI as a subprocess: help, inspect --json, analyze --json, and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from explorer.zoo import planted


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True)


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("zoo", "inspect", "analyze"):
        assert cmd in out.stdout


def test_inspect_json_lists_layer_groups():
    out = run_cli("inspect", "zoo:planted", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["n_models"] == planted.N_MODELS
    groups = {g["name"]: g for g in info["groups"]}
    for name, m, n, _ in planted.LAYERS:
        assert groups[name]["shape"] == [m, n]
        assert groups[name]["n_models"] == planted.N_MODELS
    assert {"name", "group", "seed"} <= set(info["models"][0])


def test_analyze_json_recovers_planted_k(tmp_path):
    out_file = tmp_path / "res.json"
    out = run_cli("analyze", "zoo:planted", "--layer", "layers.1", "--mode", "in", "--json", str(out_file))
    assert out.returncode == 0, out.stderr
    res = json.loads(out_file.read_text())
    assert res["k_at"]["0.9"] == planted.planted_rank("layers.1")
    assert res["mode"] == "in" and res["view"] == "full" and res["options"]["center"] == "none"
    assert len(res["models"]) == planted.N_MODELS
    np.testing.assert_allclose(np.cumsum(res["evr"]), res["cumulative_evr"], rtol=1e-9)


def test_bare_center_means_model(tmp_path):
    out_file = tmp_path / "res.json"
    out = run_cli("analyze", "zoo:planted", "--layer", "layers.0", "--center", "--json", str(out_file))
    assert out.returncode == 0, out.stderr
    assert json.loads(out_file.read_text())["options"]["center"] == "model"


@pytest.mark.parametrize("args, needle", [
    (("analyze", "zoo:planted", "--layer", "nope"), "layer group 'nope' not found"),
    (("analyze", "zoo:nosuch", "--layer", "x"), "zoo:nosuch is not a zoo family"),
    (("inspect", "/definitely/not/here"), "/definitely/not/here"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
    out = run_cli(*args)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_analyze_out_and_cache_dir(tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    args = ("analyze", "zoo:planted", "--layer", "layers.2", "--cache-dir", str(cache), "--out", str(out),
            "--json", str(tmp_path / "r.json"))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "cache key" in first.stdout and "(from cache)" not in first.stdout
    second = run_cli(*args)
    assert "(from cache)" in second.stdout
    assert len(list(cache.rglob("*.sxr"))) == 1
    for name in ("spectrum.csv", "models.csv", "coverage.csv", "basis.safetensors"):
        assert (out / name).stat().st_size > 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["cache_key"] and "null_cumulative_median" in res["metrics"]
    assert [r["name"] for r in res["per_model"]] == res["models"]
    assert all(0 <= r["energy_one_sided"] <= 1 + 1e-12 and r["k"] == res["k_at"]["0.9"] for r in res["per_model"])
    from safetensors.numpy import load_file

    t = load_file(str(out / "basis.safetensors"))
    np.testing.assert_allclose(t["eigenvalues"], np.square(res["singular_values"]), rtol=1e-9)


def test_no_cache_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    out = run_cli("analyze", "zoo:planted", "--layer", "layers.0", "--no-cache", "--cache-dir", str(cache))
    assert out.returncode == 0, out.stderr
    assert not cache.exists() or not list(cache.rglob("*.sxr"))


def test_report_writes_self_contained_html(tmp_path):
    out = run_cli("report", "zoo:planted", "--layer", "layers.0", "--layer", "layers.1", "--out", str(tmp_path / "rep"),
                  "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<script src=" not in html  # plotly.js is inline, nothing is fetched
    assert html.count('class="plotly-graph-div"') >= 8
    for layer in ("layers.0", "layers.1"):
        assert (tmp_path / "rep" / f"{layer}.full.out.basis.safetensors").exists()


@pytest.mark.parametrize("args, needle", [
    (("analyze", "zoo:planted", "--layer", "layers.0", "--k", "0"), "--k must be >= 1"),
    (("analyze", "zoo:planted", "--layer", "layers.0", "--view", "A"), "view"),
])
def test_bad_options_exit_2(args, needle):
    out = run_cli(*args)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
