"""Compression (explorer.apply): round trips, exact bytes, errors against float64 numpy references,
the bundle on disk, PEFT adapters that PEFT itself loads, and the CLI's contract.

Tolerances: float64 round trips at full rank to 1e-10 relative; a float32 bundle to 1e-6; PEFT's
merged update against s B^ A^ to 1e-5 (float32 storage).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from explorer import InputError, OptionError, load_family
from explorer.apply.bundle import read_bundle, write_bundle
from explorer.apply.compress import compress_view
from explorer.apply.compression import compress_family, compress_plan
from explorer.apply.peft_export import write_peft_adapters
from explorer.cli import main
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache
from tests.helpers import write_adapter, write_family

M, N_IN, N_MODELS, PLANTED = 12, 9, 8, 3


def _planted(seed: int = 0) -> dict[str, np.ndarray]:
    """N_MODELS matrices 12 x 9 in a planted 3-dim output subspace, plus small noise."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((M, PLANTED)))[0]
    return {f"m{i}": u @ rng.standard_normal((PLANTED, N_IN)) * 3 + 0.01 * rng.standard_normal((M, N_IN))
            for i in range(N_MODELS)}


@pytest.fixture
def dense(tmp_path):
    mats = _planted()
    return load_family(str(write_family(tmp_path / "dense", {n: {"layers.0.weight": w} for n, w in mats.items()},
                                        dtype=torch.float64))), mats


def _analysis(fam, tmp, **opts):
    return analyze_cached(fam, "layers.0", None, SpectralOptions(**opts), metrics=None, cache=ResultCache(tmp))


@pytest.mark.parametrize("center", ["none", "model", "vector"])
def test_dense_round_trip_and_errors_match_numpy(dense, tmp_path, center):
    fam, mats = dense
    res = _analysis(fam, tmp_path / "c", center=center)
    ws = [mats[n] for n in res.models]
    full = compress_view(fam, res, k=M)
    for i, w in enumerate(ws):  # every direction: the models themselves
        np.testing.assert_allclose(full.rebuild(i).numpy(), w, rtol=0, atol=1e-10 * np.abs(w).max())
    assert np.nanmax(full.errors) < 1e-10
    cv = compress_view(fam, res, k=2)
    # Reference: project onto the top-2 eigenvectors of the centred out-mode Gram, in float64 numpy.
    x = np.stack(ws)
    z = {"none": 0.0, "model": x.mean(0), "vector": x.transpose(1, 0, 2).reshape(M, -1).mean(1, keepdims=True)}[center]
    g = sum((w - z) @ (w - z).T for w in ws)
    u = np.linalg.eigh(g)[1][:, ::-1][:, :2]
    for i, w in enumerate(ws):
        ref = z + u @ u.T @ (w - z)
        np.testing.assert_allclose(cv.rebuild(i).numpy(), ref, atol=1e-10)
        np.testing.assert_allclose(cv.errors[i], np.linalg.norm(w - ref) / np.linalg.norm(w), rtol=1e-9)
        np.testing.assert_allclose(cv.mean_errors[i], np.linalg.norm(w - x.mean(0)) / np.linalg.norm(w), rtol=1e-9)
    # The planted rank captures all but the noise; the mean does far worse.
    at3 = compress_view(fam, res, k=3)
    if center == "none":
        assert np.nanmax(at3.errors) < 0.01 and np.nanmin(at3.mean_errors) > 0.3


def test_bytes_are_counted_exactly_and_the_bundle_rebuilds(dense, tmp_path):
    fam, mats = dense
    comp = compress_family(fam, ["layers.0"], k=3, options=SpectralOptions(center="model"), dtype="float32",
                           cache=ResultCache(tmp_path / "c"))
    e = comp.entries[0]
    assert comp.bytes_before == N_MODELS * M * N_IN * 8  # stored float64
    assert comp.bytes_after == (M * 3 + M * N_IN + N_MODELS * 3 * N_IN) * 4  # U_k, Z, C_i in float32
    b = read_bundle(write_bundle(comp, tmp_path / "bundle"))
    assert b.data_bytes() == comp.bytes_after
    for i, n in enumerate(e.names):
        np.testing.assert_allclose(b.rebuild(n, "layers.0", "full").numpy(), e.rebuild(i).numpy(), atol=1e-5)
    doc = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert doc["schema"] == "subspace-explorer/bundle/1" and doc["summary"]["ratio"] == pytest.approx(
        comp.bytes_before / comp.bytes_after)
    # float64 and every direction: the models back to 1e-10 through the files.
    c64 = compress_family(fam, None, k=M, dtype="float64", cache=ResultCache(tmp_path / "c"))
    b64 = read_bundle(write_bundle(c64, tmp_path / "b64"))
    for n, w in mats.items():
        np.testing.assert_allclose(b64.rebuild(n, "layers.0", "full").numpy(), w, atol=1e-10 * np.abs(w).max())


def test_tau_picks_k_of_the_spectrum_and_bad_k_is_refused(dense, tmp_path):
    fam, _ = dense
    res = _analysis(fam, tmp_path / "c")
    cv = compress_view(fam, res, tau=0.9)
    assert cv.k == res.spectrum.k_at(0.9) and cv.tau == 0.9
    with pytest.raises(OptionError, match=r"k = 13 is above the rank of the shared basis of layers.0 view full"):
        compress_view(fam, res, k=13)
    with pytest.raises(OptionError, match="one of them"):
        compress_view(fam, res, k=2, tau=0.5)
    with pytest.raises(OptionError, match=r"tau must lie in \(0, 1\]"):
        compress_view(fam, res, tau=1.5)
    model = analyze_cached(fam, "layers.0", None, SpectralOptions(mode="model"), metrics=None,
                           cache=ResultCache(tmp_path / "c"))
    with pytest.raises(OptionError, match="model-mode analysis has no shared basis"):
        compress_view(fam, model, k=2)
    with pytest.raises(OptionError, match="view 'dW' cannot be compressed"):
        compress_plan(fam, None, ["dW"])


# ------------------------------------------------------------------------------------------ LoRA
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(10, 14)
        self.v = nn.Linear(10, 6)


class Net(nn.Module):
    """What the adapters adapt: modules ``layers.0.q`` (14 x 10) and ``layers.0.v`` (6 x 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block()])


def _lora_family(tmp_path, ranks=(4, 4, 4, 4, 4, 4), dtype=torch.float32):
    rng = np.random.default_rng(7)
    va, ub = np.linalg.qr(rng.standard_normal((10, 3)))[0], np.linalg.qr(rng.standard_normal((14, 3)))[0]
    factors = {}
    for i, r in enumerate(ranks):
        a = rng.standard_normal((r, 3)) @ va.T + 0.05 * rng.standard_normal((r, 10))
        b = ub @ rng.standard_normal((3, r)) + 0.05 * rng.standard_normal((14, r))
        av, bv = rng.standard_normal((r, 10)), rng.standard_normal((6, r))
        factors[f"ad{i}"] = {"layers.0.q": (a, b), "layers.0.v": (av, bv)}
        write_adapter(tmp_path / "lora" / f"ad{i}", factors[f"ad{i}"], r, 2 * r, target_modules=["q", "v"], dtype=dtype,
                      prefix="base_model.model.")
    return load_family(str(tmp_path / "lora")), factors


def _peft_update(folder, module: str) -> np.ndarray:
    torch.manual_seed(0)
    base = Net()
    pm = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    merged = pm.merge_and_unload()
    return (getattr(merged.layers[0], module).weight - getattr(base.layers[0], module).weight).detach().double().numpy()


def test_lora_factors_update_errors_and_peft_adapters(tmp_path):
    fam, factors = _lora_family(tmp_path)
    comp = compress_family(fam, ["layers.0.q"], k=3, cache=ResultCache(tmp_path / "c"))
    a, b = comp.entry("layers.0.q", "A"), comp.entry("layers.0.q", "B")
    assert (a.basis.mode, b.basis.mode) == ("in", "out")
    u = comp.updates[0]
    for i, n in enumerate(a.names):
        a0, b0 = (np.asarray(t, dtype=np.float32).astype(np.float64) for t in factors[n]["layers.0.q"])
        a1, b1 = a.rebuild(i).numpy(), b.rebuild(i).numpy()
        ref = np.linalg.norm(b0 @ a0 - b1 @ a1) / np.linalg.norm(b0 @ a0)
        np.testing.assert_allclose(u.errors[i], ref, rtol=1e-9)
        mean = np.mean([np.asarray(f["layers.0.q"][1], np.float32).astype(float) @
                        np.asarray(f["layers.0.q"][0], np.float32).astype(float) for f in factors.values()], axis=0)
        np.testing.assert_allclose(u.mean_errors[i], np.linalg.norm(b0 @ a0 - mean) / np.linalg.norm(b0 @ a0),
                                   rtol=1e-9)
    assert np.max(u.errors) < 0.25 < 0.7 < np.min(u.mean_errors)  # the planted 3 directions carry the updates
    folders = write_peft_adapters(comp, fam, tmp_path / "peft")
    assert [f.name for f in folders] == list(a.names)
    for i, f in enumerate(folders):
        s = 2.0  # alpha / r
        np.testing.assert_allclose(_peft_update(f, "q"), s * b.rebuild(i).numpy() @ a.rebuild(i).numpy(), atol=1e-5)
        orig = load_file(str(tmp_path / "lora" / f.name / "adapter_model.safetensors"))
        new = load_file(str(f / "adapter_model.safetensors"))
        assert set(new) == set(orig) and all(new[k].dtype == orig[k].dtype for k in new)
        assert torch.equal(new["base_model.model.layers.0.v.lora_A.weight"], orig["base_model.model.layers.0.v.lora_A.weight"])
        assert (f / "adapter_config.json").read_bytes() == (tmp_path / "lora" / f.name / "adapter_config.json").read_bytes()


def test_mixed_ranks_keep_each_adapters_rank_and_full_k_is_exact(tmp_path):
    fam, factors = _lora_family(tmp_path, ranks=(2, 4, 3, 4, 1, 4), dtype=torch.float64)
    comp = compress_family(fam, ["layers.0.q"], k=10, dtype="float64", cache=ResultCache(tmp_path / "c"))
    a = comp.entry("layers.0.q", "A")
    assert [c.shape[1] for c in a.coefficients] == [2, 4, 3, 4, 1, 4]  # C_i = (A_i V)^T: k x r_i
    assert a.mean_errors is None and any("ranks differ" in n for n in comp.notes)
    b = comp.entry("layers.0.q", "B")
    assert b.k == 10  # of 14 output directions
    assert np.max(a.errors) < 1e-10  # k = 10 = n: every input direction
    folders = write_peft_adapters(comp, fam, tmp_path / "peft")
    for f in folders:
        new = load_file(str(f / "adapter_model.safetensors"))
        r = factors[f.name]["layers.0.q"][0].shape[0]
        assert tuple(new["base_model.model.layers.0.q.lora_A.weight"].shape) == (r, 10)
    assert comp.bytes_before == sum(r * (10 + 14) * 8 for r in (2, 4, 3, 4, 1, 4))


def test_writing_is_atomic(dense, tmp_path, monkeypatch):
    fam, _ = dense
    comp = compress_family(fam, None, k=2, cache=ResultCache(tmp_path / "c"))
    write_bundle(comp, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("explorer.apply.bundle.save_file", boom)
    with pytest.raises(OSError):
        write_bundle(comp, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_damaged_bundles_are_refused_by_name(dense, tmp_path):
    fam, _ = dense
    folder = write_bundle(compress_family(fam, None, k=2, cache=ResultCache(tmp_path / "c")), tmp_path / "b")
    coef = load_file(str(folder / "coefficients.safetensors"))
    coef.pop(sorted(coef)[0])
    save_file(coef, str(folder / "coefficients.safetensors"))
    with pytest.raises(InputError, match=r"coefficients.safetensors: tensor 'layers.0::full::0' named by the manifest"):
        read_bundle(folder)
    (folder / "manifest.json").write_text('{"schema": "other/1"}')
    with pytest.raises(InputError, match="schema is 'other/1'"):
        read_bundle(folder)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_compress_bundle_peft_and_bad_input(tmp_path, capsys, dense):
    fam, _ = _lora_family(tmp_path)
    src = str(tmp_path / "lora")
    cache = ["--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main(["compress", src, "--all", "--k", "2", "--out", str(tmp_path / "b"), "--json",
                 str(tmp_path / "c.json"), *cache]) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["schema"] == "subspace-explorer/compress/1" and len(doc["entries"]) == 4
    assert {(e["layer"], e["view"], e["mode"]) for e in doc["entries"]} == {
        ("layers.0.q", "A", "in"), ("layers.0.q", "B", "out"), ("layers.0.v", "A", "in"), ("layers.0.v", "B", "out")}
    out = capsys.readouterr().out
    assert "total" in out and "x); wrote a bundle" in out
    assert main(["compress", src, "--layer", "layers.0.q", "--tau", "0.9", "--format", "peft",
                 "--out", str(tmp_path / "p"), *cache]) == 0
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [f"ad{i}" for i in range(6)]
    capsys.readouterr()
    dense_src = str(tmp_path / "dense")
    bad = [
        (["compress", dense_src, "--all", "--k", "2", "--format", "peft", "--out", str(tmp_path / "x")],
         "--format peft writes LoRA adapters"),
        (["compress", src, "--all", "--layer", "layers.0.q", "--k", "2", "--out", str(tmp_path / "x")],
         "give --layer GROUP"),
        (["compress", src, "--all", "--k", "99", "--out", str(tmp_path / "x")], "k = 99 is above the rank"),
        (["compress", src, "--all", "--k", "2", "--views", "dW", "--out", str(tmp_path / "x")],
         "view 'dW' cannot be compressed"),
        (["compress", src, "--layer", "nope", "--k", "2", "--out", str(tmp_path / "x")], "nope"),
    ]
    for argv, msg in bad:
        assert main([*argv, *cache]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_all_compresses_the_lora_groups_and_keeps_adapter_heads(tmp_path):
    fam, _ = _lora_family(tmp_path)
    for d in sorted((tmp_path / "lora").iterdir()):  # a classifier head saved with each adapter
        path = d / "adapter_model.safetensors"
        tensors = load_file(str(path))
        tensors["base_model.model.classifier.weight"] = torch.randn(3, 14)
        save_file(tensors, str(path))
    fam = load_family(str(tmp_path / "lora"))
    plan = compress_plan(fam)
    assert {g.name for g, _ in plan} == {"layers.0.q", "layers.0.v"}
    assert [(g.name, v) for g, v in compress_plan(fam, ["classifier"])] == [("classifier", "full")]
    comp = compress_family(fam, None, k=2, cache=ResultCache(tmp_path / "c"))
    folders = write_peft_adapters(comp, fam, tmp_path / "peft")
    new = load_file(str(folders[0] / "adapter_model.safetensors"))
    orig = load_file(str(tmp_path / "lora" / folders[0].name / "adapter_model.safetensors"))
    assert torch.equal(new["base_model.model.classifier.weight"], orig["base_model.model.classifier.weight"])


def test_cli_compress_reports_the_zoo_accuracy(tmp_path, capsys):
    js = tmp_path / "c.json"
    assert main(["compress", "zoo:digits-lora", "--layer", "layers.1", "--k", "128", "--out", str(tmp_path / "b"),
                 "--json", str(js), "--quiet"]) == 0
    acc = json.loads(js.read_text())["accuracy"]
    assert len(acc["per_model"]) == 120 and 0 <= acc["mean_only_mean"] <= 1
    # Every direction of A and B: the adapters themselves, to float32 rounding of the evaluation.
    assert abs(acc["mean"] - acc["stored_mean"]) < 2e-3
    assert "accuracy from the compressed form" in capsys.readouterr().out
