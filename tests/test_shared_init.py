"""The shared-initialisation check: adapters clustered by their A factors, verdicts within clusters."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import explorer
from explorer.metrics.shared_init import a_cosines, init_clusters
from explorer.pipeline.shared_init import shared_init_check
from explorer.sources.resolve import load_family
from tests.helpers import write_adapter


def test_cosines_of_padded_factors_and_clusters():
    rng = np.random.default_rng(0)
    init = rng.standard_normal((4, 50))
    shared = [torch.from_numpy(init + 0.2 * rng.standard_normal((4, 50))) for _ in range(6)]
    own = [torch.from_numpy(rng.standard_normal((4, 50))) for _ in range(6)]
    padded = torch.cat([shared[0][:2], torch.zeros(2, 50, dtype=torch.float64)])  # rank 2 of the same init
    cos = a_cosines(shared + own + [padded])
    assert cos[0, 1] > 0.9 and cos[6, 7] < 0.3 and cos[0, 12] > 0.6  # the padded rows add nothing
    flat = np.stack([a.reshape(-1).numpy() for a in shared + own + [padded]])
    ref = np.abs(flat @ flat.T) / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    np.testing.assert_allclose(cos, ref, atol=1e-6)  # float32 products
    cl = init_clusters(cos)
    assert cl.shared and cl.sizes == [7] and set(np.flatnonzero(cl.labels == 0)) == {0, 1, 2, 3, 4, 5, 12}
    assert (cl.labels[6:12] == -1).all() and cl.median_within > 0.8 > 0.3 > cl.median_between
    none = init_clusters(a_cosines(own))
    assert not none.shared and "no shared A initialisation" in none.describe()


def test_zoo_shared_init_group_is_recovered():
    # zoo:digits-lora: 60 adapters from one A init, 60 from their own (metadata init_group).
    fam = load_family("zoo:digits-lora")
    check = shared_init_check(fam, "layers.0", "B")
    groups = fam.metadata["init_group"].to_numpy()
    in_cluster = groups[check.clusters.labels == 0]
    assert len(in_cluster) >= 55 and (in_cluster == "shared-A").all()
    assert [c.name for c in check.within] == ["shared init 1", "independent inits"]
    assert sum(len(c.members) for c in check.within) == len(fam)
    whole = explorer.analyze_cached(fam, "layers.0", "B")
    for c in check.within:
        assert c.verdict is not None and c.verdict.label == "shared" and c.cache_key
        assert c.cache_key != whole.cache_key  # each cluster is its own sub-family analysis


def test_independent_adapters_are_not_analysed_again(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(5):
        write_adapter(tmp_path / f"a{i}", {"blk.0.fc": (rng.standard_normal((2, 30)), rng.standard_normal((8, 2)))}, r=2)
    check = shared_init_check(load_family(str(tmp_path)), "blk.0.fc", "A")
    assert not check.clusters.shared and check.within == []
    assert check.to_json()["sizes"] == []


def test_dense_groups_have_no_init_check():
    assert shared_init_check(load_family("zoo:planted"), "layers.0", "full") is None
    with pytest.raises(explorer.OptionError, match="no layer group"):
        shared_init_check(load_family("zoo:planted"), "nope", "full")


def test_clusters_come_from_the_cache_without_reading_the_family(tmp_path, monkeypatch):
    # The Spectrum page clusters on every load: from the cache it must not read 500 A factors again.
    from explorer.pipeline.cache import ResultCache
    from explorer.pipeline.shared_init import init_clusters_of
    from explorer.sources.family import Family

    rng = np.random.default_rng(2)
    init = rng.standard_normal((2, 30))
    fam_dir = tmp_path / "fam"
    for i in range(8):
        a = init + 0.1 * rng.standard_normal((2, 30)) if i < 5 else rng.standard_normal((2, 30))
        write_adapter(fam_dir / f"a{i}", {"blk.0.fc": (a, rng.standard_normal((8, 2)))}, r=2)
    fam = load_family(str(fam_dir))
    cache = ResultCache(tmp_path / "results")
    fresh = init_clusters_of(fam, "blk.0.fc")
    stored = init_clusters_of(fam, "blk.0.fc", cache)
    monkeypatch.setattr(Family, "tensor", lambda *a, **k: pytest.fail("read the family again"))
    hit = init_clusters_of(load_family(str(fam_dir)), "blk.0.fc", cache)
    for c in (stored, hit):
        np.testing.assert_array_equal(c.labels, fresh.labels)
        assert c.sizes == fresh.sizes == [5] and c.min_size == fresh.min_size and c.threshold == fresh.threshold
        assert c.median_within == pytest.approx(fresh.median_within) and c.describe() == fresh.describe()
    monkeypatch.undo()
    # A changed file is another key: clustered again from its data.
    write_adapter(fam_dir / "a7", {"blk.0.fc": (init + 0.1 * rng.standard_normal((2, 30)), rng.standard_normal((8, 2)))}, r=2)
    assert init_clusters_of(load_family(str(fam_dir)), "blk.0.fc", cache).sizes == [6]
