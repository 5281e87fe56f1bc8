"""The thin end-to-end path: planted family -> engine -> figure, and library hygiene."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg

import explorer
from explorer.figures import scree_figure
from explorer.zoo import planted
from tests.helpers import decode_plotly, reference_spectrum, trace


def test_import_explorer_leaves_streamlit_unimported():
    code = "import sys, explorer, explorer.cli, explorer.figures, explorer.zoo; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def planted_family():
    return explorer.load_family("zoo:planted")


@pytest.mark.parametrize("layer", [name for name, *_ in planted.LAYERS])
@pytest.mark.parametrize("mode", ["out", "in"])
def test_planted_rank_is_recovered(planted_family, layer, mode):
    res = explorer.analyze(planted_family, layer, options=explorer.SpectralOptions(mode=mode))
    k = planted.planted_rank(layer)
    assert res.spectrum.k_at(0.9) == k
    # The recovered basis spans the planted one: all principal angles tiny (noise is 3 %).
    u, v = planted.planted_bases(layer)
    ref = u if mode == "out" else v
    angles = scipy.linalg.subspace_angles(res.spectrum.basis[:, :k], ref)
    assert angles.max() < 0.1


def test_spectrum_matches_scipy_svd_of_unfolding(random_family):
    fam = explorer.load_family(str(random_family))
    mats = [fam.tensor(m, "layers.0.weight").double().numpy() for m in fam.models]
    for mode in ("out", "in", "model"):
        res = explorer.analyze(fam, "layers.0", options=explorer.SpectralOptions(mode=mode))
        lam = reference_spectrum(mats, mode)[0]  # squared singular values of the explicit unfolding
        d = min(len(lam), len(res.spectrum.eigenvalues))
        # float64 accumulation: eigenvalues agree with squared singular values to 1e-10 relative.
        np.testing.assert_allclose(res.spectrum.eigenvalues[:d], lam[:d], rtol=1e-10, atol=1e-10 * lam[0])
        # trace invariant: sum of eigenvalues = sum_i ||W_i||_F^2
        assert res.spectrum.total == pytest.approx(sum((m**2).sum() for m in mats), rel=1e-12)


def test_scree_figure_data_equals_engine_evr(planted_family):
    res = explorer.analyze(planted_family, "layers.0")
    fig = decode_plotly(scree_figure(res.spectrum, 0.9).to_plotly_json())
    bars, cum = trace(fig, "EVR per component"), trace(fig, "cumulative EVR")
    n = len(bars["y"])
    np.testing.assert_allclose(bars["y"], res.spectrum.evr[:n], rtol=1e-12)
    np.testing.assert_allclose(cum["y"], res.spectrum.cumulative[:n], rtol=1e-12)
    np.testing.assert_array_equal(bars["x"], np.arange(1, n + 1))
