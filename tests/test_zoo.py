"""The trained digits zoo: determinism, counts, metadata, accuracies, evaluators, PEFT layout.

The four default digits families are built once per module into a temporary cache (about
20 s of CPU on one thread).  Numerical comparisons state their tolerances: float32 training
and evaluation, so merged weights are compared with float64 numpy references at 1e-5.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from explorer.core.errors import InputError, OptionError
from explorer.zoo import digits, registry
from explorer.zoo import digits_data as dd
from explorer.zoo import train as tr
from explorer.zoo.evaluate import LoraEvaluator
from explorer.zoo.evaluators import evaluator_for
from explorer.zoo.projection import project, projected_accuracy
from tests.helpers import reference_gram

FAMILIES = {"digits-mlp-scratch": 60, "digits-mlp-finetune": 60, "digits-lora": 100, "digits-random-init": 60}
COLUMNS = {"name", "task", "task_group", "seed", "init_group", "test_accuracy", "chance"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Build the default digits families into a fresh cache; yield ``{name: folder}``."""
    root = tmp_path_factory.mktemp("cache")
    calls: list[tuple[int, int, str]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE_DIR", str(root))
        folders = {n: registry.build(n, progress=lambda d, t, l: calls.append((d, t, l))) for n in FAMILIES}
        yield {"folders": folders, "progress": calls, "root": root}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _meta(zoo, name: str) -> pd.DataFrame:
    return pd.read_csv(zoo["folders"][name] / "metadata.csv")


# ------------------------------------------------------------------------------------ tasks
def test_tasks_are_sixty_distinct_over_six_groups():
    names = [t.name for t in dd.TASKS]
    assert len(names) == 60 == len(set(names))
    assert {t.group for t in dd.TASKS} == set(dd.TASK_GROUPS)
    x_tr, y_tr, x_te, y_te = dd.split()
    assert x_tr.shape == (1347, 64) and x_te.shape == (450, 64)
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0


@pytest.mark.parametrize("name, chance", [("all", 0.1), ("ovr-4", 0.5), ("subset-013", 1 / 3)])
def test_task_chance_levels(name, chance):
    td = dd.task_data(name)
    assert td.chance == pytest.approx(chance, abs=0.01)
    assert len(td.y_train) > 3 * len(td.y_test) - 30  # the 75 / 25 split holds per task


def test_task_transforms():
    base, ovr = dd.task_data("all"), dd.task_data("ovr-4")
    assert set(ovr.y_test.tolist()) == {0, 1} and ovr.y_test.float().mean().item() == pytest.approx(0.5)
    perm = dd.get_task("perm-" + "".join(map(str, dd.TASKS[1].params)))
    y = dd.task_data(perm.name).y_train.numpy()
    np.testing.assert_array_equal(y, np.asarray(perm.params)[base.y_train.numpy()])
    sub = dd.task_data("subset-013")
    assert set(sub.y_test.tolist()) == {0, 1, 3}
    noisy = dd.task_data("noise-0.30")
    assert (noisy.x_train - base.x_train).std().item() == pytest.approx(0.3, rel=0.05)
    flipped = dd.task_data("rot+180").x_test.numpy().reshape(-1, 8, 8)
    np.testing.assert_allclose(flipped, base.x_test.numpy().reshape(-1, 8, 8)[:, ::-1, ::-1], atol=1e-5)
    with pytest.raises(InputError, match="does not exist"):
        dd.get_task("nope")


# ---------------------------------------------------------------------------- training code
def test_batched_forward_matches_torch_module():
    stack = tr.init_stack([1, 2])
    x = torch.rand(2, 5, 64)
    ref = []
    for i in range(2):
        m = tr.DigitsMLP()
        m.load_state_dict(stack.state_dict(i))
        ref.append(m(x[i]))
    torch.testing.assert_close(tr.forward(stack.weights, stack.biases, x), torch.stack(ref), atol=1e-6, rtol=1e-6)


def test_training_is_deterministic_and_independent_of_the_batch():
    names, seeds = ["all", "ovr-3", "rot+20"], [1, 2, 3]
    data = dd.stack_tasks(names)
    a = tr.train_dense(tr.init_stack(seeds), data, seeds, 40, 3e-3, 32)
    b = tr.train_dense(tr.init_stack(seeds), data, seeds, 40, 3e-3, 32)
    assert all(torch.equal(x, y) for x, y in zip(a.weights + a.biases, b.weights + b.biases))
    # Model 1 trained alone ends where it ends in the stack (float32 kernels: 1e-5).
    alone = tr.train_dense(tr.init_stack([2]), dd.stack_tasks(["ovr-3"]), [2], 40, 3e-3, 32)
    for x, y in zip(a.weights, alone.weights):
        torch.testing.assert_close(x[1], y[0], atol=1e-5, rtol=0)


def test_lora_training_keeps_padding_zero_and_shares_a_init():
    base = tr.init_stack([7])
    lora = tr.init_lora([5, 5, 6], [4, 8, 6], 16.0)
    torch.testing.assert_close(lora.a[0][0, :4], lora.a[0][1, :4], atol=0, rtol=0)  # shared seed, shared rows
    assert not torch.equal(lora.a[0][0, :4], lora.a[0][2, :4])
    assert all(float(b.abs().max()) == 0 for b in lora.b)  # PEFT's init: B = 0
    seeds = [1, 2, 3]
    out = tr.train_lora(base, lora, dd.stack_tasks(["all", "ovr-3", "rot+20"]), seeds, 20, 1e-2, 32)
    assert float(out.a[0][0, 4:].abs().max()) == 0 and float(out.b[0][0, :, 4:].abs().max()) == 0
    assert float(out.b[0][0, :, :4].abs().max()) > 0
    assert out.factors(0)["layers.0"][0].shape == (4, 64)


def test_progress_is_reported(zoo):
    calls = zoo["progress"]
    assert calls and all(0 <= d <= t and isinstance(label, str) for d, t, label in calls)
    assert any("digits-lora" in label for _, _, label in calls)


# ---------------------------------------------------------------------------- built families
def test_registry_lists_the_families_and_minilm_is_not_default():
    recipes = {r.name: r for r in registry.list_recipes()}
    for name in FAMILIES:
        assert recipes[name].default
    if "minilm-lora" in recipes:
        assert not recipes["minilm-lora"].default


@pytest.mark.parametrize("name", list(FAMILIES))
def test_counts_and_metadata(zoo, name):
    folder = zoo["folders"][name]
    meta = _meta(zoo, name)
    assert len(meta) >= FAMILIES[name]
    assert COLUMNS <= set(meta.columns)
    assert meta["name"].is_unique and meta.notna().all().all()
    assert json.loads((folder / "recipe.json").read_text())["name"] == name
    if name == "digits-lora":
        members = sorted(p.name for p in (folder / "models").iterdir())
        assert all((folder / "models" / m / "adapter_config.json").is_file() for m in members)
        assert set(meta["init_group"]) == {"shared-A", "independent-A"}
        assert set(meta["rank"]) == {4, 5, 6, 7, 8}
        assert (folder / "base" / "model.safetensors").is_file()
    else:
        members = sorted(p.stem for p in (folder / "models").glob("*.safetensors"))
    assert members == sorted(meta["name"])
    if name != "digits-random-init":
        assert set(meta["task_group"]) == set(dd.TASK_GROUPS)


def test_folder_source_reads_the_labels(zoo):
    from explorer.sources.folder import load_folder

    for name in ("digits-mlp-scratch", "digits-lora"):
        fam = load_folder(zoo["folders"][name])
        md = fam.metadata
        assert len(fam) == len(_meta(zoo, name))
        assert {"task", "task_group", "seed", "init_group", "test_accuracy"} <= set(md.columns)


@pytest.mark.parametrize("name", ["digits-mlp-scratch", "digits-mlp-finetune", "digits-lora"])
def test_trained_models_beat_chance(zoo, name):
    meta = _meta(zoo, name)
    assert (meta["test_accuracy"] - meta["chance"]).min() > 0.25
    assert meta["test_accuracy"].mean() > 0.85


def test_random_init_is_near_chance(zoo):
    meta = _meta(zoo, "digits-random-init")
    assert abs(meta["test_accuracy"].mean() - 0.1) < 0.06
    assert meta["test_accuracy"].max() < 0.4


def test_rebuild_gives_the_same_bytes(zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    again = registry.build("digits-random-init")
    first = zoo["folders"]["digits-random-init"]
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all(_sha(first / f) == _sha(again / f) for f in files)


def test_finetunes_share_the_stored_base(zoo):
    folder = zoo["folders"]["digits-mlp-finetune"]
    base = load_file(str(folder / "base" / "model.safetensors"))
    ref = digits.pretrained_base().state_dict(0)
    assert all(torch.equal(base[k], ref[k]) for k in ref)
    model = load_file(str(next((folder / "models").glob("*.safetensors"))))
    delta = (model["layers.1.weight"] - base["layers.1.weight"]).norm() / base["layers.1.weight"].norm()
    assert 0 < float(delta) < 1  # a fine-tune: moved, but stays near its base


# ------------------------------------------------------------------------------- evaluators
@pytest.mark.parametrize("name", list(FAMILIES))
def test_evaluator_reproduces_stored_accuracy(zoo, name):
    ev = evaluator_for(name, zoo["folders"][name])
    got = ev.accuracies()
    meta = _meta(zoo, name)
    # Identical float32 arithmetic; allow one test image to flip on a different kernel path.
    tol = {t: 1.0 / len(dd.task_data(t).y_test) + 1e-12 for t in set(meta["task"])}
    for row in meta.itertuples():
        assert abs(got[row.name] - row.test_accuracy) <= tol[row.task], row.name


def test_evaluator_for_names_and_errors(zoo):
    folder = zoo["folders"]["digits-mlp-scratch"]
    assert evaluator_for("zoo:planted") is None and evaluator_for("/some/folder") is None
    ev = evaluator_for("zoo:digits-mlp-scratch", folder)
    model = ev.models[0]
    w = ev.weights(model)["layers.1.weight"]
    assert ev.accuracy(model, {"layers.1.weight": w}) == ev.stored_accuracy(model)
    with pytest.raises(InputError, match="shape"):
        ev.accuracy(model, {"layers.1.weight": w[:3]})
    with pytest.raises(InputError, match="no tensor"):
        ev.accuracy(model, {"layers.9.weight": w})
    with pytest.raises(InputError, match="no model"):
        ev.accuracy("nobody")


def test_zeroing_a_layer_drops_to_near_chance(zoo):
    ev = evaluator_for("digits-mlp-scratch", zoo["folders"]["digits-mlp-scratch"])
    names = [n for n in ev.models if "-all" in n or "perm-" in n]
    rep = {n: {"layers.1.weight": torch.zeros(128, 128), "layers.1.bias": torch.zeros(128)} for n in names}
    accs = ev.accuracies(rep)
    assert max(accs.values()) < 0.25


def test_projected_accuracy_full_rank_and_zero_rank(zoo):
    ev = evaluator_for("digits-mlp-scratch", zoo["folders"]["digits-mlp-scratch"])
    mats = [ev.weights(n)["layers.1.weight"].double().numpy() for n in ev.models]
    u = np.linalg.eigh(reference_gram(mats, "out"))[1][:, ::-1]
    df = projected_accuracy(ev, "layers.1", "full", [0, 16, 128], u=u)
    full = df[df.k == 128]
    assert np.abs(full.accuracy.to_numpy() - full.stored_accuracy.to_numpy()).max() <= 1 / 88 + 1e-12
    means = df.groupby("k").accuracy.mean()
    assert means[0] < 0.4 < means[16] < means[128] + 1e-9
    with pytest.raises(OptionError):
        projected_accuracy(ev, "layers.1", "dW", [1], u=u)
    with pytest.raises(OptionError):
        projected_accuracy(ev, "layers.1", "full", [129], u=u)


def test_project_matches_numpy_reference():
    rng = np.random.default_rng(0)
    w, mu = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    u = np.linalg.qr(rng.standard_normal((6, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((5, 3)))[0]
    ref = mu + u @ u.T @ (w - mu) @ v @ v.T
    got = project(*(torch.from_numpy(t) for t in (w, u, v, mu)))
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


# ------------------------------------------------------------------------------------- LoRA
def test_lora_adapters_load_in_peft_and_merge_to_s_b_a(zoo):
    peft = pytest.importorskip("peft")
    folder = zoo["folders"]["digits-lora"]
    meta = _meta(zoo, "digits-lora")
    ev = evaluator_for("digits-lora", folder)
    assert isinstance(ev, LoraEvaluator)
    base_sd = load_file(str(folder / "base" / "model.safetensors"))
    for row in meta.iloc[[0, 67]].itertuples():
        module = tr.DigitsMLP()
        module.load_state_dict(base_sd)
        pm = peft.PeftModel.from_pretrained(module, str(folder / "models" / row.name))
        assert pm.peft_config["default"].r == row.rank
        raw = load_file(str(folder / "models" / row.name / "adapter_model.safetensors"))
        assert "base_model.model.layers.1.lora_A.weight" in raw
        a = raw["base_model.model.layers.1.lora_A.weight"].double().numpy()
        b = raw["base_model.model.layers.1.lora_B.weight"].double().numpy()
        assert a.shape == (row.rank, 128) and b.shape == (128, row.rank)
        s = row.lora_alpha / row.rank
        merged = pm.merge_and_unload()
        delta = merged.layers[1].weight.detach().double().numpy() - base_sd["layers.1.weight"].double().numpy()
        np.testing.assert_allclose(delta, s * b @ a, atol=1e-5)
        np.testing.assert_allclose(ev.weights(row.name)["layers.1.delta"].double().numpy(), s * b @ a, atol=1e-5)
        # PEFT's model gets the stored accuracy on the adapter's task.
        td = dd.task_data(row.task)
        with torch.no_grad():
            acc = (merged(td.x_test).argmax(-1) == td.y_test).double().mean().item()
        assert abs(acc - row.test_accuracy) <= 1 / len(td.y_test) + 1e-12


def test_lora_projection_views(zoo):
    folder = zoo["folders"]["digits-lora"]
    ev = evaluator_for("digits-lora", folder)
    names = ev.models[:12]
    deltas = [ev.weights(n)["layers.1.delta"].double().numpy() for n in names]
    u = np.linalg.eigh(reference_gram(deltas, "out"))[1][:, ::-1]
    df = projected_accuracy(ev, "layers.1", "dW", [0, 128], u=u, models=names)
    full = df[df.k == 128]
    assert np.abs(full.accuracy.to_numpy() - full.stored_accuracy.to_numpy()).max() <= 1 / 88 + 1e-12
    a_factors = [ev.weights(n)["layers.1.lora_A.weight"].double().numpy() for n in names]
    v = np.linalg.eigh(reference_gram(a_factors, "in"))[1][:, ::-1]
    df_a = projected_accuracy(ev, "layers.1", "A", [128], v=v, models=names)
    assert np.abs(df_a.accuracy.to_numpy() - df_a.stored_accuracy.to_numpy()).max() <= 1 / 88 + 1e-12
    with pytest.raises(OptionError, match="input"):
        projected_accuracy(ev, "layers.1", "A", [1], u=u, models=names)


def _row_space_overlap(mats: list[np.ndarray]) -> float:
    """Mean over pairs of sum cos^2(principal angles) / r between the row spaces of A_i."""
    qs = [np.linalg.qr(m.T)[0] for m in mats]
    vals = [np.linalg.norm(qs[i].T @ qs[j]) ** 2 / min(qs[i].shape[1], qs[j].shape[1])
            for i in range(len(qs)) for j in range(i + 1, len(qs))]
    return float(np.mean(vals))


def test_shared_a_init_makes_a_subspaces_align(zoo):
    """The shared-initialisation critique: trained A factors keep their common init's row space."""
    ev = evaluator_for("digits-lora", zoo["folders"]["digits-lora"])
    meta = _meta(zoo, "digits-lora")
    over = {}
    for group in ("shared-A", "independent-A"):
        names = meta[(meta.init_group == group) & (meta["rank"] == 8)]["name"]
        over[group] = _row_space_overlap([ev.weights(n)["layers.1.lora_A.weight"].double().numpy() for n in names])
    # Random 8-dim subspaces of R^128 overlap by 8/128 = 0.06 on average.
    assert over["independent-A"] < 0.15
    assert over["shared-A"] > 3 * over["independent-A"], over


@pytest.mark.parametrize("name, view, mode, center", [
    ("digits-mlp-finetune", "delta", "out", "model"),
    ("digits-mlp-scratch", "full", "in", "none"),
])
def test_accuracy_vs_k_from_an_analysis(zoo, name, view, mode, center):
    import explorer
    from explorer.zoo.projection import accuracy_vs_k

    fam = explorer.load_family(f"zoo:{name}")
    opts = explorer.SpectralOptions(mode=mode, center=center)
    res = explorer.analyze(fam, "layers.1", view=view, options=opts, metrics=None)
    df = accuracy_vs_k(res)
    k_max = res.spectrum.basis.shape[1]
    assert set(df.k) >= {0, 1, k_max} and len(df) == len(df.k.unique()) * len(fam)
    means = df.groupby("k").accuracy.mean()
    assert means[k_max] >= means[0] - 1e-9
    assert evaluator_for(str(zoo["folders"][name])) is not None  # a zoo folder path works too
