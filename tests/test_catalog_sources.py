"""The catalog reads headers only: no tensor data, counted through /proc/self/io."""
from __future__ import annotations

import json

import pytest
import torch

import explorer.sources.readers as readers
from explorer import load_family
from explorer.catalog.groups import build_catalog, module_type_of
from tests.helpers import write_adapter


def _rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def _adapters(root, n: int, r: int = 8, width: int = 1024) -> None:
    for i in range(n):
        factors = {f"model.layers.{layer}.self_attn.{proj}": (torch.randn(r, width), torch.randn(m, r))
                   for layer in range(4) for proj, m in (("q_proj", width), ("k_proj", width // 4))}
        write_adapter(root / f"ad{i:02d}", factors, r, 2 * r)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_catalog_reads_headers_only(tmp_path, monkeypatch):
    _adapters(tmp_path, 6)
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())

    def no_data(*a, **k):  # any tensor read during cataloguing is a bug
        raise AssertionError("tensor data read while building the catalog")

    monkeypatch.setattr(readers, "load_tensor", no_data)
    readers._header_cached.cache_clear()
    before = _rchar()
    fam = load_family(str(tmp_path))
    cat = build_catalog(fam)
    read = _rchar() - before
    assert len(cat) == 8 and all(g.kind == "lora" and g.rank == 8 and g.n_models == 6 for g in cat)
    assert cat[0].name == "model.layers.0.self_attn.k_proj" and cat[0].shape == (256, 1024)
    assert cat[0].module_type == "model.layers.{i}.self_attn.k_proj" and cat[0].index == 0
    # headers (~2 KB each) and configs, against ~0.4 MB of tensor data per adapter
    assert read < on_disk / 50, (read, on_disk)


def test_torch_files_are_memory_mapped_not_read(tmp_path):
    torch.save({"model_state_dict": {"w.weight": torch.randn(1024, 1024)}}, tmp_path / "big.pt")
    size = (tmp_path / "big.pt").stat().st_size
    before = _rchar()
    fam = load_family(str(tmp_path))
    cat = build_catalog(fam)
    read = _rchar() - before
    assert cat[0].shape == (1024, 1024) and cat[0].dtype == "F32"
    assert read < size / 20, (read, size)


def test_module_type_of():
    assert module_type_of("model.layers.12.self_attn.q_proj") == ("model.layers.{i}.self_attn.q_proj", 12)
    assert module_type_of("blocks.0.mlp.3") == ("blocks.{i}.mlp.{i}", 0)
    assert module_type_of("head") == ("head", None)


def test_describe_family_is_json_ready(tmp_path):
    from explorer.catalog.groups import describe_family

    _adapters(tmp_path, 2, width=64)
    (tmp_path / "metadata.csv").write_text("name,task\nad00,qa\n")  # ad01 has no task: NaN -> null
    d = json.loads(json.dumps(describe_family(load_family(str(tmp_path)))))
    assert d["kind"] == "lora" and d["n_models"] == 2 and len(d["groups"]) == 8
    assert d["models"][0]["task"] == "qa" and d["models"][1]["task"] is None
    assert d["groups"][0]["rank"] == 8 and d["groups"][0]["shape"] == [16, 64]
