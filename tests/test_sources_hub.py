"""Hub sources against an HF cache laid out on disk exactly as huggingface_hub lays it out.

``models--org--repo/{blobs/<sha256>, refs/<ref>, snapshots/<commit>/<file> -> ../../blobs/<sha256>}``;
HF_HUB_OFFLINE=1, so nothing touches the network.  The adapter files themselves are written by
PEFT's ``save_pretrained``.
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch import nn

from explorer import InputError, load_family
from explorer.catalog.groups import build_catalog, find_group
from explorer.catalog.views import merged_delta
from explorer.sources.hub import choose_files, parse_spec


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(5, 4)

    def forward(self, x):  # pragma: no cover
        return x


def _put_snapshot(cache: Path, repo: str, commit: str, src: Path, refs: tuple[str, ...] = ("main",)) -> None:
    """Copy the files of ``src`` into the cache as huggingface_hub would store them."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    for d in ("blobs", "refs", f"snapshots/{commit}"):
        (storage / d).mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        (storage / "blobs" / sha).write_bytes(data)
        link = storage / "snapshots" / commit / f.name
        link.symlink_to(os.path.join("..", "..", "blobs", sha))
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)


def _adapter_dir(tmp: Path, seed: int) -> tuple[Path, float, torch.Tensor]:
    """A PEFT adapter folder, its scale, and the ΔW PEFT's own merge gives (float64)."""
    torch.manual_seed(seed)
    pm = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    out = tmp / f"src{seed}"
    pm.save_pretrained(out)
    (out / "README.md").write_text(f"---\nlicense: apache-2.0\ntags: [seed{seed}]\n---\ncard\n")
    merged = copy.deepcopy(pm).merge_and_unload()
    delta = merged.q_proj.weight.detach().double() - pm.base_model.model.q_proj.base_layer.weight.detach().double()
    return out, 2.0, delta


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    deltas = {}
    for i, repo in enumerate(["org/lora-a", "org/lora-b", "org/other"]):
        src, _, delta = _adapter_dir(tmp_path, i)
        _put_snapshot(cache, repo, f"{i + 1:040x}", src)
        deltas[repo] = delta
    # a second revision of lora-a, tagged v2 while main stays at the first one
    src, _, delta = _adapter_dir(tmp_path, 7)
    _put_snapshot(cache, "org/lora-a", "f" * 40, src, refs=("v2",))
    deltas["org/lora-a@v2"] = delta
    # a dense repo holding both formats: only the safetensors copy is used
    dense = tmp_path / "dense"
    dense.mkdir()
    save_file({"q_proj.weight": torch.ones(4, 5)}, str(dense / "model.safetensors"))
    torch.save({"q_proj.weight": torch.zeros(4, 5)}, dense / "pytorch_model.bin")
    _put_snapshot(cache, "org/dense", "e" * 40, dense)
    return cache, deltas


def test_repo_list_offline_from_cache(hub_cache):
    cache, deltas = hub_cache
    fam = load_family("hf:org/lora-a,org/lora-b")
    assert [m.name for m in fam.models] == ["org/lora-a", "org/lora-b"]
    assert fam.models[0].source == f"hf:org/lora-a@{1:040x}"
    md = fam.metadata.set_index("name")
    assert md.loc["org/lora-b", "tags"] == "seed1" and md.loc["org/lora-a", "revision"] == f"{1:040x}"
    g = find_group(build_catalog(fam), "q_proj")
    assert g.kind == "lora"
    for name in ("org/lora-a", "org/lora-b"):
        np.testing.assert_allclose(merged_delta(fam, g, name).double().numpy(), deltas[name].numpy(), rtol=0, atol=1e-6)
    # every file resolves into the blob store of the standard cache layout
    assert all(Path(f).resolve().parent.name == "blobs" for m in fam.models for f in m.files)


def test_revision_pinning(hub_cache):
    cache, deltas = hub_cache
    by_tag = load_family("hf:org/lora-a@v2")
    by_commit = load_family("hf:org/lora-a@" + "f" * 40)
    for fam in (by_tag, by_commit):
        assert fam.models[0].source == "hf:org/lora-a@" + "f" * 40
        g = find_group(build_catalog(fam), "q_proj")
        np.testing.assert_allclose(merged_delta(fam, g, "org/lora-a").double().numpy(),
                                   deltas["org/lora-a@v2"].numpy(), rtol=0, atol=1e-6)


def test_glob_resolves_against_the_cache_offline(hub_cache):
    fam = load_family("hf:org/lora-*", name_regex=r"lora-(?P<letter>\w)$")
    assert [m.name for m in fam.models] == ["org/lora-a", "org/lora-b"]
    assert fam.metadata["letter"].tolist() == ["a", "b"]
    with pytest.raises(InputError, match="matches no repository in the local HF cache"):
        load_family("hf:nobody/x*")


def test_dense_repo_prefers_safetensors_and_missing_repo_is_named(hub_cache):
    fam = load_family("hf:org/dense,org/absent")
    assert [m.name for m in fam.models] == ["org/dense"]
    assert fam.models[0].files[0].endswith("model.safetensors")
    assert fam.skipped and fam.skipped[0].startswith("org/absent: hf:org/absent: is not in the local HF cache")
    assert (fam.skipped[0].name, fam.skipped[0].path) == ("org/absent", "hf:org/absent")
    with pytest.raises(InputError, match="no usable models"):
        load_family("hf:org/absent")


def test_spec_parsing_and_file_choice():
    assert parse_spec("hf:a/b@v1, c/d") == [("a/b", "v1"), ("c/d", None)]
    with pytest.raises(InputError, match="is not ORG/REPO"):
        parse_spec("hf:justaname")
    assert choose_files(["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md"]) == [
        "adapter_config.json", "adapter_model.safetensors", "README.md"]
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert choose_files(["model.safetensors.index.json", *shards, "pytorch_model.bin", "original/x.safetensors"]) == [
        "model.safetensors.index.json", *shards]
    assert choose_files(["pytorch_model.bin", "config.json"]) == ["pytorch_model.bin"]


def test_online_path_downloads_only_needed_files(tmp_path, monkeypatch):
    """The online code path, with huggingface_hub's network calls replaced by recorders."""
    import types

    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    src, _, _ = _adapter_dir(tmp_path, 3)
    commit = "c" * 40
    calls = []

    def fake_snapshot(repo_id, *, revision=None, cache_dir=None, dry_run=False, allow_patterns=None,
                      local_files_only=False):
        calls.append(dict(repo=repo_id, revision=revision, dry_run=dry_run, allow=allow_patterns,
                          local=local_files_only))
        if dry_run:
            names = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md",
                     "training_args.bin", "checkpoints/step1/adapter_model.safetensors"]
            return [types.SimpleNamespace(filename=n, commit_hash=commit) for n in names]
        snap = tmp_path / "hub" / "snap" / commit
        if not snap.exists():
            snap.mkdir(parents=True)
            for f in src.iterdir():
                (snap / f.name).write_bytes(f.read_bytes())
        return str(snap)

    class FakeApi:
        def list_models(self, author=None, search=None):
            assert (author, search) == ("org", "lora-")
            return [types.SimpleNamespace(id=i) for i in ("org/lora-x", "org/lora-y", "org/other")]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    fam = load_family("hf:org/lora-*@main")
    assert [m.name for m in fam.models] == ["org/lora-x", "org/lora-y"]
    assert fam.models[0].source == f"hf:org/lora-x@{commit}"
    real = [c for c in calls if not c["dry_run"]]
    assert all(c["revision"] == commit and not c["local"] for c in real)  # pinned to the listed commit
    assert real[0]["allow"] == ["adapter_config.json", "adapter_model.safetensors", "README.md"]
