"""The CLI as a subprocess: help, inspect --json, analyze --json, and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from explorer.zoo import planted
from tests.helpers import write_adapter


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
    # The report's atlas: one verdict per group, Holm-adjusted, and each band's construction.
    assert '<section id="verdicts">' in html and html.count("<td>shared</td>") == 2
    assert "Gaussian null: each model its own Gaussian" in html


@pytest.mark.parametrize("args, needle", [
    (("analyze", "zoo:planted", "--layer", "layers.0", "--k", "0"), "--k must be >= 1"),
    (("analyze", "zoo:planted", "--layer", "layers.0", "--view", "A"), "view"),
])
def test_bad_options_exit_2(args, needle):
    out = run_cli(*args)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr


def test_view_a_defaults_to_the_input_space_and_mode_still_wins(tmp_path):
    rng = np.random.default_rng(5)
    m, n, r = 7, 9, 2
    for i in range(4):
        write_adapter(tmp_path / "fam" / f"a{i}", {"blk.0.fc": (rng.standard_normal((r, n)), rng.standard_normal((m, r)))}, r)
    fam, cache = str(tmp_path / "fam"), str(tmp_path / "cache")

    def analyze(name: str, *args: str) -> tuple[dict, str]:
        out = run_cli("analyze", fam, "--layer", "blk.0.fc", "--json", str(tmp_path / name), "--quiet", *args)
        assert out.returncode == 0, out.stderr
        return json.loads((tmp_path / name).read_text()), out.stdout

    # --view A alone analyses the input space R^n (n components), not the r x r space of the factors.
    res, stdout = analyze("a.json", "--view", "A", "--cache-dir", cache)
    assert (res["view"], res["mode"], res["options"]["mode"], len(res["evr"])) == ("A", "in", "in", n)
    assert "view=A mode=in" in stdout
    # Choosing the default explicitly is the same analysis: the same cache entry.
    same, stdout = analyze("a_in.json", "--view", "A", "--mode", "in", "--cache-dir", cache)
    assert same["cache_key"] == res["cache_key"] and "(from cache)" in stdout
    # An explicit --mode wins over the view's default.
    out_mode, _ = analyze("a_out.json", "--view", "A", "--mode", "out", "--no-cache")
    assert (out_mode["mode"], out_mode["options"]["mode"], len(out_mode["evr"])) == ("out", "out", r)
    b, _ = analyze("b.json", "--view", "B", "--no-cache")
    assert (b["mode"], len(b["evr"])) == ("out", m)


def test_null_draws_option(tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("analyze", "zoo:planted", "--layer", "layers.0", "--null-draws", "0", "--json", str(out),
                   "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert "null_cumulative_median" not in res["metrics"] and res["metrics_options"]["null_draws"] == 0
    assert res["verdict"]["label"] == "undetermined"
