"""Merging (explorer.apply.merge*): each rule on planted cases with known answers, the subspace
rule as the projection of the mean (the critics' identity), LoRA merges that PEFT loads, the zoo's
table of every merge on every task, and bad input.

Tolerances: float64 identities to 1e-10; PEFT's merged update against tau to 1e-5 (float32 files).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from torch import nn

from explorer import InputError, OptionError, load_family
from explorer.apply.merge import merge_family, numerical_factors
from explorer.apply.merge_eval import merge_accuracy, merge_summary
from explorer.apply.merge_export import write_merged
from explorer.apply.merge_rules import MERGE_METHODS, MergeOptions, merge_task_arithmetic, merge_ties, trim
from explorer.cli import main
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache
from tests.helpers import write_adapter, write_family


def test_ties_on_a_hand_made_case():
    taus = [torch.tensor([1.0, -2.0, 0.1, 3.0], dtype=torch.float64), torch.tensor([-1.0, -1.5, 0.2, 2.0], dtype=torch.float64),
            torch.tensor([0.5, 3.0, -0.3, -4.0], dtype=torch.float64)]
    assert torch.equal(trim(taus[0], 0.5), torch.tensor([0.0, -2.0, 0.0, 3.0], dtype=torch.float64))
    # Trimmed: [0,-2,0,3], [0,-1.5,0,2], [0,3,0,-4]; elected signs [0,-,0,+]; disjoint means -1.75, 2.5.
    np.testing.assert_allclose(merge_ties(taus, 0.5, 1.0).numpy(), [0.0, -1.75, 0.0, 2.5])
    np.testing.assert_allclose(merge_ties(taus, 0.5, 0.5).numpy(), [0.0, -0.875, 0.0, 1.25])
    np.testing.assert_allclose(merge_task_arithmetic(taus, 0.3).numpy(), 0.3 * sum(t.numpy() for t in taus), atol=1e-15)
    with pytest.raises(OptionError, match="density must lie in"):
        MergeOptions(method="ties", density=0.0)
    with pytest.raises(OptionError, match="is not one of"):
        MergeOptions(method="average")


@pytest.fixture
def finetunes(tmp_path):
    """A base and 5 fine-tunes whose deltas lie in a planted 2-dim output subspace (+ noise), with biases."""
    rng = np.random.default_rng(4)
    w0, b0 = rng.standard_normal((8, 6)), rng.standard_normal(8)
    u = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    mats = {f"f{i}": {"layers.0.weight": w0 + u @ rng.standard_normal((2, 6)) + 0.01 * rng.standard_normal((8, 6)),
                      "layers.0.bias": b0 + rng.standard_normal(8)} for i in range(5)}
    write_family(tmp_path / "base", {"base": {"layers.0.weight": w0, "layers.0.bias": b0}}, dtype=torch.float64)
    folder = write_family(tmp_path / "ft", mats, dtype=torch.float64)
    fam = load_family(str(folder), base=str(tmp_path / "base" / "base.safetensors"))
    return fam, w0, b0, mats


@pytest.mark.parametrize("center", ["none", "model"])
def test_subspace_merge_is_the_projection_of_the_mean(finetunes, tmp_path, center):
    fam, w0, b0, mats = finetunes
    spectral = SpectralOptions(center=center)
    cache = ResultCache(tmp_path / "c")
    chosen = ["f0", "f2", "f3"]
    mean = merge_family(fam, chosen, None, MergeOptions("mean"), spectral, cache).groups[0]
    taus = [mats[n]["layers.0.weight"] - w0 for n in chosen]
    np.testing.assert_allclose(mean.tau.numpy(), np.mean(taus, 0), atol=1e-12)
    np.testing.assert_allclose(mean.weight.numpy(), w0 + np.mean(taus, 0), atol=1e-12)
    np.testing.assert_allclose(mean.merged_bias().numpy(), np.mean([mats[n]["layers.0.bias"] for n in chosen], 0),
                               atol=1e-12)
    res = analyze_cached(fam, "layers.0", "delta", spectral, metrics=None, cache=cache)
    u = res.spectrum.basis[:, :2]
    all_taus = np.stack([mats[f"f{i}"]["layers.0.weight"] - w0 for i in range(5)])
    z = all_taus.mean(0) if center == "model" else 0.0
    sub = merge_family(fam, chosen, None, MergeOptions("subspace", k=2), spectral, cache).groups[0]
    np.testing.assert_allclose(sub.tau.numpy(), z + u @ u.T @ (np.mean(taus, 0) - z), atol=1e-10)
    full = merge_family(fam, chosen, None, MergeOptions("subspace", k=8), spectral, cache).groups[0]
    np.testing.assert_allclose(full.tau.numpy(), np.mean(taus, 0), atol=1e-10)  # every direction: the mean
    ta = merge_family(fam, chosen, None, MergeOptions("task-arithmetic", lam=0.5), spectral, cache).groups[0]
    np.testing.assert_allclose(ta.tau.numpy(), 0.5 * np.sum(taus, 0), atol=1e-12)
    np.testing.assert_allclose(ta.merged_bias().numpy(),
                               b0 + 0.5 * np.sum([mats[n]["layers.0.bias"] - b0 for n in chosen], 0), atol=1e-12)


def test_bad_merges_are_refused(finetunes, tmp_path):
    fam, *_ = finetunes
    with pytest.raises(OptionError, match="has no model 'nope'"):
        merge_family(fam, ["f0", "nope"], None, MergeOptions("mean"))
    with pytest.raises(OptionError, match="k = 9 is above the rank"):
        merge_family(fam, None, None, MergeOptions("subspace", k=9), cache=ResultCache(tmp_path / "c"))
    rng = np.random.default_rng(0)
    odd = write_family(tmp_path / "odd", {"a": rng.standard_normal((8, 6)), "b": rng.standard_normal((8, 6)),
                                          "c": rng.standard_normal((8, 5))})
    with pytest.raises(InputError, match="'c'"):
        merge_family(load_family(str(odd)), None, ["layers.0"], MergeOptions("mean"))


# ------------------------------------------------------------------------------------------ LoRA
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(7, 9)])


def _peft_delta(folder) -> np.ndarray:
    torch.manual_seed(0)
    base = Net()
    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).merge_and_unload()
    return (merged.layers[0].weight - base.layers[0].weight).detach().double().numpy()


def test_lora_merges_with_a_shared_a_and_peft_loads_them(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 7))  # one A initialisation shared by every adapter
    ub = np.linalg.qr(rng.standard_normal((9, 5)))[0]
    bs = [ub @ rng.standard_normal((5, 3)) for _ in range(4)]  # in 5 of the 9 output dimensions
    for i, b in enumerate(bs):
        write_adapter(tmp_path / "lora" / f"ad{i}", {"layers.0": (a, b)}, 3, 6, target_modules=["layers.0"],
                      dtype=torch.float64)
    fam = load_family(str(tmp_path / "lora"))
    cache = ResultCache(tmp_path / "c")
    deltas = [2.0 * b @ a for b in bs]  # s = alpha / r = 2
    sub = merge_family(fam, None, None, MergeOptions("subspace", k=7), cache=cache)
    g = sub.groups[0]
    # A shared A, and k = 7 spans every A row and all 5 directions of the B columns: the mean update.
    np.testing.assert_allclose(g.tau.numpy(), np.mean(deltas, 0), atol=1e-10)
    assert g.factors[0].shape == (3, 7)
    write_merged(sub, fam, tmp_path / "sub")
    np.testing.assert_allclose(_peft_delta(tmp_path / "sub"), g.tau.numpy(), atol=1e-5)
    ties = merge_family(fam, None, None, MergeOptions("ties", density=0.5), cache=cache)
    write_merged(ties, fam, tmp_path / "ties")
    np.testing.assert_allclose(_peft_delta(tmp_path / "ties"), ties.groups[0].tau.numpy(), atol=1e-5)
    cfg = json.loads((tmp_path / "ties" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["layers.0"] and cfg["rank_pattern"] == {r"layers\.0": cfg["r"]}
    f_a, f_b = numerical_factors(ties.groups[0].tau)
    np.testing.assert_allclose((f_b @ f_a).numpy(), ties.groups[0].tau.numpy(), atol=1e-10)
    assert json.loads((tmp_path / "ties" / "merge.json").read_text())["method"] == "ties"


# ------------------------------------------------------------------------------------------- zoo
def test_zoo_table_every_merge_on_every_task():
    fam = load_family("zoo:digits-mlp-finetune")
    names = [m.name for m in fam.models if "subset" in m.name][:3]
    merges = [merge_family(fam, names, None, MergeOptions(m, k=8)) for m in MERGE_METHODS]
    table, notes = merge_accuracy(fam.source, merges)
    assert notes == []
    tasks = table["task"].unique()
    assert len(tasks) == 3 and len(table) == (4 + 3) * 3
    assert set(table[table.kind == "merge"]["model"]) == set(MERGE_METHODS)
    assert table["accuracy"].between(0, 1).all()
    own = table[table.own]
    # Each model on its own task: its stored accuracy (the evaluator's forward pass is the build's).
    from explorer.zoo.evaluators import evaluator_for

    ev = evaluator_for("zoo:digits-mlp-finetune")
    for _, r in own.iterrows():
        assert abs(r["accuracy"] - ev.stored_accuracy(r["model"])) < 1e-9
    summary = merge_summary(table)
    assert list(summary["kind"][:4]) == ["merge"] * 4
    one = merge_family(fam, names[:1], None, MergeOptions("mean"))
    t1, _ = merge_accuracy(fam.source, [one])
    assert np.allclose(t1[t1.model == "mean"]["accuracy"].to_numpy(), t1[t1.model == names[0]]["accuracy"].to_numpy())


def test_cli_merge(finetunes, tmp_path, capsys):
    fam, *_ = finetunes
    argv = ["merge", str(tmp_path / "ft"), "--base", str(tmp_path / "base" / "base.safetensors"), "--method",
            "subspace", "--k", "2", "--models", "f0,f1", "--out", str(tmp_path / "m"), "--json", str(tmp_path / "m.json"),
            "--cache-dir", str(tmp_path / "c"), "--quiet"]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["schema"] == "subspace-explorer/merge/1" and doc["models"] == ["f0", "f1"] and doc["accuracy"] is None
    from safetensors.torch import load_file

    merged = load_file(str(tmp_path / "m" / "merged.safetensors"))
    assert set(merged) == {"layers.0.weight", "layers.0.bias"}
    assert main(["merge", str(tmp_path / "ft"), "--method", "mean", "--models", "f0,zz", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    assert "has no model 'zz'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    out = tmp_path / "zoo-merge"
    assert main(["merge", "zoo:digits-mlp-finetune", "--method", "ties", "--models",
                 ",".join(n.name for n in load_family("zoo:digits-mlp-finetune").models[17:20]), "--out", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "accuracy over 3 tasks" in text and "ties" in text and "mean" in text
