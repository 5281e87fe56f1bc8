"""Uploads (content-addressed folders under the cache root) and family manifests."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save, save_file

from explorer import InputError, load_family
from explorer.catalog.groups import build_catalog, find_group
from explorer.sources.manifest import save_manifest
from explorer.sources.resolve import load_manifest
from explorer.sources.upload import family_from_uploads
from tests.helpers import write_adapter, write_family


def _st_bytes(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return save({"layers.0.weight": torch.randn(5, 4, generator=g)})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_upload_files_is_content_addressed(cache):
    buf = io.BytesIO()
    torch.save({"state_dict": {"layers.0.weight": torch.ones(5, 4)}}, buf)
    files = [("a.safetensors", _st_bytes(0)), ("b.pt", buf.getvalue()),
             ("metadata.csv", b"name,task\na,qa\nb,nli\n")]
    fam = family_from_uploads(files)
    assert [m.name for m in fam.models] == ["a", "b"]
    assert fam.metadata.set_index("name").loc["b", "task"] == "nli"
    assert str(cache / "uploads") in fam.source
    again = family_from_uploads(list(reversed(files)))
    assert again.source == fam.source  # same content, same folder
    reopened = load_family(fam.source)  # the source string reopens it
    assert [m.name for m in reopened.models] == ["a", "b"]
    other = family_from_uploads([("a.safetensors", _st_bytes(1))])
    assert other.source != fam.source


def test_upload_zip_of_adapter_folders_and_bad_names(cache, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(2):
            g = torch.Generator().manual_seed(i)
            ad = write_adapter(tmp_path / "src" / f"ad{i}", {"fc": (torch.randn(2, 6, generator=g),
                                                                   torch.randn(3, 2, generator=g))}, 2, 4)
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                zf.write(ad / f, f"loras/ad{i}/{f}")
    fam = family_from_uploads([("loras.zip", buf.getvalue())])
    assert [m.name for m in fam.models] == ["ad0", "ad1"] and fam.kind == "lora"
    assert find_group(build_catalog(fam), "fc").shape == (3, 6)
    assert [m.name for m in load_family(fam.source).models] == ["ad0", "ad1"]
    with pytest.raises(InputError, match="not a plain relative file name"):
        family_from_uploads([("../evil.safetensors", _st_bytes(0))])
    with pytest.raises(InputError, match="not a readable zip"):
        family_from_uploads([("x.zip", b"PK\x03\x04broken")])
    with pytest.raises(InputError, match="no files"):
        family_from_uploads([])


def test_manifest_round_trip(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, seeds in ((a, (0, 1)), (b, (2,))):
        write_family(d, {f"m{s}": torch.randn(5, 4, generator=torch.Generator().manual_seed(s)).numpy() for s in seeds})
    write_family(tmp_path, {"base": np.zeros((5, 4))})
    man = tmp_path / "fam.yaml"
    man.write_text(yaml.safe_dump({"name": "mix", "sources": ["a", str(b)], "base": "base.safetensors",
                                   "name_regex": r"m(?P<seed>\d)", "labels": {"m2": {"task": "qa"}}}))
    fam = load_family(str(man))
    assert fam.name == "mix" and [m.name for m in fam.models] == ["m0", "m1", "m2"]
    md = fam.metadata.set_index("name")
    assert md.loc["m2", "task"] == "qa" and md.loc["m1", "seed"] == "1"
    g = find_group(build_catalog(fam), "layers.0")
    assert g.in_base
    ref = [fam.tensor(m, g.tensor).numpy() for m in fam.models]
    for ext in ("yaml", "json"):
        out = save_manifest(fam, tmp_path / "saved" / f"again.{ext}")
        back = load_family(str(out))
        assert [m.name for m in back.models] == ["m0", "m1", "m2"] and back.base is not None
        assert back.metadata.set_index("name").loc["m2", "task"] == "qa"
        for m, r in zip(back.models, ref):
            np.testing.assert_array_equal(back.tensor(m, g.tensor).numpy(), r)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(InputError, match="field 'sources' must be a non-empty list"):
        load_manifest(bad)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"sources": ["a", "a"]}))
    fam2 = load_family(str(dup))
    assert len(fam2) == 2 and len(fam2.skipped) == 2 and "repeats the name" in fam2.skipped[0]


def test_manifest_hub_sources_are_pinned(tmp_path):
    from explorer.sources.family import Family, ModelRef
    from explorer.sources.manifest import manifest_dict

    save_file({"w.weight": torch.ones(2, 2)}, str(tmp_path / "x.safetensors"))
    f = str(tmp_path / "x.safetensors")
    fam = Family("hubfam", "hf:org/a*", [ModelRef("org/a1", (f,), source="hf:org/a1@" + "1" * 40),
                                         ModelRef("org/a2", (f,), source="hf:org/a2@" + "2" * 40)])
    assert manifest_dict(fam)["sources"] == ["hf:org/a1@" + "1" * 40, "hf:org/a2@" + "2" * 40]
