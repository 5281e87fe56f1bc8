"""Projecting newcomers onto a fitted basis (explorer.apply.newcomer): a member gets its in-family
coordinates and in-sample energy back (to 1e-10), a newcomer from the planted subspace is typical,
pure noise is an outlier, and bad input gets one message (exit 2 in the CLI)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from explorer import InputError, OptionError, load_family
from explorer.apply.newcomer import OUTLIER_Z, project_newcomers, robust_z
from explorer.cli import main
from explorer.engine.options import SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache
from tests.helpers import write_adapter, write_family

M, N_IN, N_MODELS = 12, 9, 10


def _members(rng, u, n, noise=0.05):
    return [u @ rng.standard_normal((u.shape[1], N_IN)) + noise * rng.standard_normal((M, N_IN)) for _ in range(n)]


@pytest.fixture
def planted(tmp_path):
    rng = np.random.default_rng(1)
    u = np.linalg.qr(rng.standard_normal((M, 3)))[0]
    fam = {f"m{i}": {"layers.0.weight": w} for i, w in enumerate(_members(rng, u, N_MODELS))}
    new = {"typical": {"layers.0.weight": _members(rng, u, 1)[0]},
           "noise": {"layers.0.weight": rng.standard_normal((M, N_IN))}}
    other = {"wide": {"layers.0.weight": rng.standard_normal((M, N_IN + 1))}}
    return (write_family(tmp_path / "fam", fam, dtype=torch.float64), write_family(tmp_path / "new", new, dtype=torch.float64),
            write_family(tmp_path / "other", other, dtype=torch.float64))


def _fit(folder, tmp, **opts):
    fam = load_family(str(folder))
    return fam, analyze_cached(fam, "layers.0", None, SpectralOptions(**opts), MetricsOptions(null_draws=0, loo="on"),
                               cache=ResultCache(tmp))


@pytest.mark.parametrize("center", ["none", "model"])
@pytest.mark.parametrize("mode", ["out", "in"])
def test_a_member_gets_its_in_family_coordinates_back(planted, tmp_path, center, mode):
    fam, res = _fit(planted[0], tmp_path / "c", center=center, mode=mode)
    k = 3
    proj = project_newcomers(fam, fam, res, k=k)
    m = res.metrics
    for i, e in enumerate(proj.entries):
        assert e.name == res.models[i]
        np.testing.assert_allclose(e.coordinates, m.coords[i], atol=1e-10)
        np.testing.assert_allclose(e.captured_energy, m.energy_one[i, k - 1], atol=1e-10)
        assert e.nearest[0][0] == e.name and e.nearest[0][1] < 1e-9
    assert proj.reference == "leave-one-out" and proj.k == k


def test_typical_newcomer_and_noise_outlier(planted, tmp_path):
    fam, res = _fit(planted[0], tmp_path / "c")
    proj = project_newcomers(load_family(str(planted[1])), fam, res, k=3)
    by = {e.name: e for e in proj.entries}
    assert by["typical"].captured_energy > 0.95 and by["typical"].heldout_percentile > 5
    assert not by["typical"].is_outlier
    assert by["noise"].captured_energy < 0.6 and by["noise"].heldout_percentile == 0.0
    assert by["noise"].is_outlier and by["noise"].outlier > OUTLIER_Z
    ref = 1 - res.metrics.heldout.loo[:, 2]
    med = np.median(ref)
    np.testing.assert_allclose(by["noise"].outlier, (1 - by["noise"].captured_energy - med) /
                               (1.4826 * np.median(np.abs(ref - med))), rtol=1e-12)
    doc = proj.to_json()
    assert doc["schema"] == "subspace-explorer/project/1"
    assert set(doc["entries"][0]) == {"name", "captured_energy", "heldout_percentile", "nearest", "outlier", "is_outlier"}


def test_robust_z_conventions():
    assert robust_z(0.5, np.array([0.5, 0.5, 0.5])) == 0.0
    assert robust_z(0.9, np.array([0.5, 0.5, 0.5])) == np.inf
    assert np.isnan(robust_z(0.5, np.array([np.nan])))


def test_bad_newcomers_are_refused_by_name(planted, tmp_path):
    fam, res = _fit(planted[0], tmp_path / "c")
    with pytest.raises(InputError, match=r"layers.0 is a dense group of shape 12x10, the basis .* shape 12x9"):
        project_newcomers(load_family(str(planted[2])), fam, res)
    _, model = _fit(planted[0], tmp_path / "c", mode="model")
    with pytest.raises(OptionError, match="model-mode analysis has no shared basis"):
        project_newcomers(fam, fam, model)
    with pytest.raises(OptionError, match="k = 40 is above the rank"):
        project_newcomers(fam, fam, res, k=40)
    with pytest.raises(OptionError, match=r"fitted in view full \(mode out\); the newcomers were asked in mode in"):
        project_newcomers(fam, fam, res, mode="in")
    with pytest.raises(OptionError, match="asked in view delta"):
        project_newcomers(fam, fam, res, view="delta")


def test_lora_newcomer_in_view_a(tmp_path):
    rng = np.random.default_rng(3)
    v = np.linalg.qr(rng.standard_normal((10, 2)))[0]
    for i in range(6):
        a = rng.standard_normal((3, 2)) @ v.T + 0.01 * rng.standard_normal((3, 10))
        write_adapter(tmp_path / "fam" / f"ad{i}", {"layers.0.q": (a, rng.standard_normal((14, 3)))}, 3, 6)
    a = rng.standard_normal((5, 2)) @ v.T  # another rank: the input space is what is compared
    write_adapter(tmp_path / "new" / "late", {"layers.0.q": (a, rng.standard_normal((14, 5)))}, 5, 10)
    fam = load_family(str(tmp_path / "fam"))
    res = analyze_cached(fam, "layers.0.q", "A", SpectralOptions(), MetricsOptions(null_draws=0),
                         cache=ResultCache(tmp_path / "c"))
    assert res.spectrum.mode == "in"
    proj = project_newcomers(load_family(str(tmp_path / "new")), fam, res, k=2)
    assert proj.entries[0].captured_energy > 0.999 and proj.mode == "in"
    assert proj.entries[0].nearest == [] and any("no coordinates" in n for n in proj.notes)


def test_cli_project(planted, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "c"), "--quiet", "--null-draws", "0"]
    assert main(["project", str(planted[1]), "--onto", str(planted[0]), "--layer", "layers.0", "--k", "3",
                 "--json", str(tmp_path / "p.json"), *cache]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert [e["name"] for e in doc["entries"]] == ["noise", "typical"]
    assert doc["entries"][0]["is_outlier"] is True and len(doc["entries"][0]["nearest"]) == 5
    assert "OUTLIER" in capsys.readouterr().out
    assert main(["project", str(planted[2]), "--onto", str(planted[0]), "--layer", "layers.0", *cache]) == 2
    err = capsys.readouterr().err
    assert "shape 12x10" in err and "Traceback" not in err
