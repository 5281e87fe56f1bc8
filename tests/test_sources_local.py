"""Local folders: safetensors, torch state dicts, sharded checkpoints; validation and skipping.

Every weight file here is written by the library that defines its format (safetensors'
``save_file``, ``torch.save``, huggingface_hub's ``save_torch_state_dict`` for shards).
Numerical comparisons are exact: files round-trip float32 bit for bit.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import save_file

from explorer import InputError, load_family
from explorer.catalog.groups import build_catalog, find_group
from explorer.catalog.views import stream_for_view


class Custom:
    """Any class that is not allowlisted makes weights_only refuse the pickle."""


def _sd(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.mlp.weight": torch.randn(6, 5, generator=g).to(dtype),
        "model.layers.1.mlp.weight": torch.randn(6, 5, generator=g).to(dtype),
        "model.layers.0.mlp.bias": torch.randn(6, generator=g).to(dtype),
    }


def test_folder_of_mixed_formats(tmp_path):
    save_file(_sd(0), str(tmp_path / "a.safetensors"))
    torch.save(_sd(1), tmp_path / "b.pt")
    torch.save({"epoch": 3, "state_dict": _sd(2)}, tmp_path / "c.pth")
    torch.save({"model_state_dict": _sd(3), "optimizer_state_dict": {"lr": 0.1}}, tmp_path / "d.bin")
    torch.save({f"module.{k}": v for k, v in _sd(4).items()}, tmp_path / "e.pt")  # DataParallel prefix
    (tmp_path / "notes.txt").write_text("not a model")
    fam = load_family(str(tmp_path))
    assert [m.name for m in fam.models] == ["a", "b", "c", "d", "e"]
    assert fam.skipped == []
    md = fam.metadata
    assert list(md["format"]) == ["safetensors", "torch", "torch", "torch", "torch"]
    assert (md["size_bytes"] > 0).all()
    g = find_group(build_catalog(fam), "model.layers.1.mlp")
    got = [t for t in stream_for_view(fam, g, "full").open()]
    for i, t in enumerate(got):
        np.testing.assert_array_equal(t.numpy(), _sd(i)["model.layers.1.mlp.weight"].numpy())


def test_sharded_checkpoint_with_index(tmp_path):
    for i in range(2):
        sd = {f"model.layers.{j}.mlp.weight": torch.randn(40, 30) for j in range(4)}
        # max_shard_size small enough that the library writes several shards and an index
        (tmp_path / f"model{i}").mkdir()
        save_torch_state_dict(sd, tmp_path / f"model{i}", max_shard_size=10_000)
        assert (tmp_path / f"model{i}" / "model.safetensors.index.json").exists()
        torch.save(sd, tmp_path / f"ref{i}.ptref")
    fam = load_family(str(tmp_path))
    assert [m.name for m in fam.models] == ["model0", "model1"]
    assert all(len(m.files) > 1 for m in fam.models)
    assert fam.metadata["format"].tolist() == ["sharded", "sharded"]
    one = load_family(str(tmp_path / "model1" / "model.safetensors.index.json"))
    assert [m.name for m in one.models] == ["model1"] and len(one.models[0].files) > 1
    cat = build_catalog(fam)
    assert [g.index for g in cat] == [0, 1, 2, 3] and all(g.n_models == 2 for g in cat)
    for i, m in enumerate(fam.models):
        ref = torch.load(tmp_path / f"ref{i}.ptref", weights_only=True)
        np.testing.assert_array_equal(fam.tensor(m, "model.layers.3.mlp.weight").numpy(), ref["model.layers.3.mlp.weight"].numpy())


def test_sharded_missing_shard_and_missing_tensor_are_named(tmp_path):
    sd = {f"w{j}.weight": torch.randn(40, 30) for j in range(4)}
    for d in ("good", "noshard", "notensor"):
        (tmp_path / d).mkdir()
    save_torch_state_dict(sd, tmp_path / "good", max_shard_size=10_000)
    save_torch_state_dict(sd, tmp_path / "noshard", max_shard_size=10_000)
    idx = json.loads((tmp_path / "noshard" / "model.safetensors.index.json").read_text())
    victim = sorted(set(idx["weight_map"].values()))[0]
    (tmp_path / "noshard" / victim).unlink()
    save_torch_state_dict(sd, tmp_path / "notensor", max_shard_size=10_000)
    p = tmp_path / "notensor" / "model.safetensors.index.json"
    idx = json.loads(p.read_text())
    idx["weight_map"]["ghost.weight"] = next(iter(idx["weight_map"].values()))
    p.write_text(json.dumps(idx))
    fam = load_family(str(tmp_path))
    assert [m.name for m in fam.models] == ["good"]
    why = dict(s.split(": ", 1) for s in fam.skipped)
    assert f"shard {victim!r} is missing" in why["noshard"]
    assert "'ghost.weight' is missing from shard" in why["notensor"]


def test_bad_members_are_skipped_with_reasons(tmp_path):
    for i in range(3):
        save_file(_sd(i), str(tmp_path / f"ok{i}.safetensors"))
    raw = (tmp_path / "ok0.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!!}")
    torch.save(_sd(0), tmp_path / "corrupt.pt")
    blob = (tmp_path / "corrupt.pt").read_bytes()
    (tmp_path / "corrupt.pt").write_bytes(blob[: len(blob) // 3])
    torch.save({"w.weight": torch.ones(2, 2), "obj": Custom()}, tmp_path / "pickle.pt")
    (tmp_path / "emptydir").mkdir()
    fam = load_family(str(tmp_path))
    assert [m.name for m in fam.models] == ["ok0", "ok1", "ok2"]
    why = dict(s.split(": ", 1) for s in fam.skipped)
    assert set(why) == {"truncated", "garbage", "corrupt", "pickle", "emptydir"}
    assert "truncated" in why["truncated"] or "beyond the end" in why["truncated"]
    assert "not valid JSON" in why["garbage"]
    assert "corrupt or truncated torch file" in why["corrupt"]
    assert "refused by torch.load(weights_only=True)" in why["pickle"]
    assert "holds no weight files" in why["emptydir"]
    assert all("\n" not in s for s in fam.skipped)


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(InputError, match="holds no models"):
        load_family(str(tmp_path))
    with pytest.raises(InputError, match="neither zoo:NAME"):
        load_family(str(tmp_path / "nope"))
    torch.save({"a": 1}, tmp_path / "x.pt")  # no tensors at all
    with pytest.raises(InputError, match="no usable models.*holds no state dict"):
        load_family(str(tmp_path))


def test_shape_mismatch_and_missing_tensor_name_model(tmp_path):
    for i in range(3):
        save_file(_sd(i), str(tmp_path / f"m{i}.safetensors"))
    bad = _sd(9)
    bad["model.layers.0.mlp.weight"] = torch.randn(7, 5)
    del bad["model.layers.1.mlp.weight"]
    save_file(bad, str(tmp_path / "m3.safetensors"))
    fam = load_family(str(tmp_path))
    cat = {g.name: g for g in build_catalog(fam)}
    g0, g1 = cat["model.layers.0.mlp"], cat["model.layers.1.mlp"]
    assert (g0.n_models, g0.shape, g0.missing) == (3, (6, 5), ("m3",))
    assert g1.n_models == 3 and "is missing" in g1.problems[0][1]
    with pytest.raises(InputError, match=r"model 'm3': tensor 'model.layers.0.mlp.weight' has shape \(7, 5\), expected \(6, 5\)"):
        stream_for_view(fam, g0, "full")
    with pytest.raises(InputError, match="no 2-D weight tensor is shared"):
        build_catalog(fam, complete_only=True)
    from explorer.catalog.groups import usable_family

    sub = usable_family(fam, g0)
    assert [m.name for m in sub.models] == ["m0", "m1", "m2"] and sub.skipped[0].startswith("m3: ")
    assert sum(1 for _ in stream_for_view(sub, g0, "full").open()) == 3


def test_nan_and_unsupported_dtype_are_named(tmp_path):
    sd = _sd(0)
    sd["model.layers.0.mlp.weight"][1, 2] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    sd = _sd(1)
    sd["model.layers.0.mlp.weight"] = torch.ones(6, 5, dtype=torch.int8)
    save_file(sd, str(tmp_path / "int8.safetensors"))
    fam = load_family(str(tmp_path))
    g = find_group(build_catalog(fam), "model.layers.0.mlp")
    assert g.missing == ("int8",) and g.dtype == "F32"
    with pytest.raises(InputError, match="model 'int8': tensor 'model.layers.0.mlp.weight' has dtype I8"):
        stream_for_view(fam, g, "full")
    with pytest.raises(InputError, match="model 'int8': tensor 'model.layers.0.mlp.weight' has dtype I8"):
        fam.tensor(fam.models[0], g.tensor)
    with pytest.raises(InputError, match="model 'nan': tensor 'model.layers.0.mlp.weight' .* holds NaN or Inf"):
        fam.tensor(fam.models[1], g.tensor)


def test_half_precision_is_upcast(tmp_path):
    save_file(_sd(0, torch.float16), str(tmp_path / "h.safetensors"))
    torch.save(_sd(0, torch.bfloat16), tmp_path / "b.pt")
    fam = load_family(str(tmp_path))
    cat = build_catalog(fam)
    assert {g.dtype for g in cat} == {"BF16"}  # first model in order is b.pt
    for m in fam.models:
        t = fam.tensor(m, "model.layers.0.mlp.weight")
        assert t.dtype == torch.float32
        ref = _sd(0, torch.float16 if m.name == "h" else torch.bfloat16)["model.layers.0.mlp.weight"].float()
        np.testing.assert_array_equal(t.numpy(), ref.numpy())


def test_single_weight_file_is_a_family_of_one(tmp_path):
    save_file(_sd(0), str(tmp_path / "only.safetensors"))
    fam = load_family(str(tmp_path / "only.safetensors"))
    assert len(fam) == 1 and fam.models[0].name == "only"


def test_name_regex_readme_and_sidecar_labels(tmp_path):
    for s in (1, 2):
        d = tmp_path / f"run-seed{s}"
        d.mkdir()
        save_file(_sd(s), str(d / "model.safetensors"))
        (d / "README.md").write_text(f"---\nlicense: mit\ntags: [a, b]\ndatasets:\n  - ds{s}\n---\n# Card\n")
    (tmp_path / "metadata.csv").write_text("name,task\nrun-seed1,qa\nrun-seed2,nli\n")
    fam = load_family(str(tmp_path), name_regex=r"seed(?P<seed>\d+)")
    md = fam.metadata.set_index("name")
    assert md.loc["run-seed2", "seed"] == "2" and md.loc["run-seed1", "task"] == "qa"
    assert md.loc["run-seed1", "tags"] == "a,b" and md.loc["run-seed2", "datasets"] == "ds2"
    assert md.loc["run-seed1", "license"] == "mit"
    from explorer import OptionError

    with pytest.raises(OptionError, match="no named group"):
        load_family(str(tmp_path), name_regex=r"seed\d+")
