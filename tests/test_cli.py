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
    groups = {g["name"]: g for g in info["layer_groups"]}
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
