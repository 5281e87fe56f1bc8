"""PEFT LoRA adapters written by PEFT's own ``save_pretrained``; ΔW checked against PEFT's merge.

Tolerances: PEFT merges in float32, we compute s·B·A in float32 from the same factors, so the
two agree to float32 rounding; compared in float64 with atol 1e-6 on entries of size O(1).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from torch import nn

from explorer import InputError, OptionError, load_family
from explorer.catalog.groups import (
    build_catalog,
    find_group,
    layer_indices,
    module_types,
    select_groups,
)
from explorer.catalog.views import (
    DenseStream,
    FactorStream,
    default_view,
    merged_delta,
    stream_for_view,
)
from tests.helpers import write_adapter


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 6)
        self.v_proj = nn.Linear(8, 4)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = Attn()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer() for _ in range(3)])
        self.head = nn.Linear(6, 3)

    def forward(self, x):  # pragma: no cover - never run, PEFT only needs the modules
        return x


def _base() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def _adapter(base: Tiny, seed: int, **cfg) -> nn.Module:
    torch.manual_seed(100 + seed)
    config = LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False, **cfg)
    return get_peft_model(copy.deepcopy(base), config)


def _family_dir(tmp_path, configs: dict[str, dict], safe: bool = True):
    """The zoo's LoRA layout: models/<adapter>/ (PEFT files), base/model.safetensors, metadata.csv."""
    root = tmp_path / "fam"
    base = _base()
    (root / "base").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(root / "base" / "model.safetensors"))
    peft_models = {}
    for i, (name, cfg) in enumerate(configs.items()):
        pm = _adapter(base, i, **cfg)
        pm.save_pretrained(root / "models" / name, safe_serialization=safe)
        peft_models[name] = pm
    rows = "\n".join(f"{n},task{i % 2}" for i, n in enumerate(configs))
    (root / "metadata.csv").write_text("name,task\n" + rows + "\n")
    return root, base, peft_models


def _peft_delta(base: Tiny, pm: nn.Module, module: str) -> np.ndarray:
    merged = copy.deepcopy(pm).merge_and_unload()
    w = dict(merged.named_parameters())[module + ".weight"].detach().double().numpy()
    return w - dict(base.named_parameters())[module + ".weight"].detach().double().numpy()


def test_peft_family_with_base_and_merge_equivalence(tmp_path):
    configs = {
        "a0": dict(r=4, lora_alpha=8),
        "a1": dict(r=4, lora_alpha=16, rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3}),
        "a2": dict(r=4, lora_alpha=8, use_rslora=True),
    }
    root, base, pms = _family_dir(tmp_path, configs)
    fam = load_family(str(root))
    assert fam.kind == "lora" and fam.base is not None
    assert [m.name for m in fam.models] == ["a0", "a1", "a2"]
    md = fam.metadata.set_index("name")
    assert md.loc["a1", "lora_alpha"] == "16" and md.loc["a2", "use_rslora"] == "true"
    assert md.loc["a0", "task"] == "task0" and md.loc["a0", "format"] == "peft"
    cat = build_catalog(fam)
    lora = select_groups(cat, kind="lora")
    assert [g.name for g in lora] == [f"layers.{i}.self_attn.q_proj" for i in range(3)] + [
        f"layers.{i}.self_attn.v_proj" for i in range(3)]
    assert all(g.in_base for g in lora)
    path, stored = fam.locate(fam.models[0], "layers.0.self_attn.q_proj.lora_B.weight")
    assert path.endswith("adapter_model.safetensors")
    assert stored == "base_model.model.layers.0.self_attn.q_proj.lora_B.weight"
    g = find_group(cat, "base_model.model.layers.0.self_attn.q_proj.lora_A.weight")
    assert (g.kind, g.shape, g.rank, g.n_models) == ("lora", (6, 8), 4, 3)
    assert default_view(fam, g) == "dW"
    for module in ("layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj", "layers.2.self_attn.v_proj"):
        grp = find_group(cat, module)
        stream = stream_for_view(fam, grp, "dW")
        assert isinstance(stream, FactorStream) and stream.shape == grp.shape
        dense = list(stream.dense().open())
        for i, name in enumerate(configs):
            ref = _peft_delta(base, pms[name], module)
            np.testing.assert_allclose(dense[i].double().numpy(), ref, rtol=0, atol=1e-6)
            np.testing.assert_allclose(merged_delta(fam, grp, name).double().numpy(), ref, rtol=0, atol=1e-6)
    # rank_pattern: a1 has rank 2 on layers.1 q_proj, so that group has mixed ranks
    g1 = find_group(cat, "layers.1.self_attn.q_proj")
    assert g1.rank is None and g1.ranks == (2, 4)
    assert stream_for_view(fam, g1, "dW").ranks == (4, 2, 4)
    with pytest.raises(OptionError, match=r"ranks differ across models, so only mode in .*use view 'dW'"):
        stream_for_view(fam, g1, "A").check("model", "none", "view 'A'")
    with pytest.raises(OptionError, match="does not apply"):
        stream_for_view(fam, g1, "full")


def test_views_A_and_B_stack_the_factors(tmp_path):
    root, base, pms = _family_dir(tmp_path, {"x": dict(r=3, lora_alpha=6), "y": dict(r=3, lora_alpha=6)})
    fam = load_family(str(root))
    g = find_group(build_catalog(fam), "layers.2.self_attn.v_proj")
    sa, sb = stream_for_view(fam, g, "A"), stream_for_view(fam, g, "B")
    assert isinstance(sa, DenseStream) and sa.shape == (3, 8) and sb.shape == (4, 3)
    for pm, a, b in zip(pms.values(), sa.open(), sb.open()):
        mod = pm.base_model.model.layers[2].self_attn.v_proj
        np.testing.assert_array_equal(a.numpy(), mod.lora_A["default"].weight.detach().numpy())
        np.testing.assert_array_equal(b.numpy(), mod.lora_B["default"].weight.detach().numpy())


def test_delta_view_on_dense_group_with_base(tmp_path):
    root, base, pms = _family_dir(tmp_path, {"x": dict(r=2, lora_alpha=2)})
    # Full fine-tunes of the base: the delta view subtracts it.
    fts = tmp_path / "fts"
    (fts / "models").mkdir(parents=True)
    refs = []
    for i in range(3):
        sd = {k: v + 0.01 * (i + 1) * torch.randn_like(v) for k, v in base.state_dict().items()}
        save_file(sd, str(fts / "models" / f"ft{i}.safetensors"))
        refs.append(sd["layers.1.self_attn.q_proj.weight"].double() - base.state_dict()["layers.1.self_attn.q_proj.weight"].double())
    fam = load_family(str(fts), base=str(root / "base"))
    g = find_group(build_catalog(fam), "layers.1.self_attn.q_proj")
    assert g.kind == "dense" and g.in_base
    for got, ref in zip(stream_for_view(fam, g, "delta").open(), refs):
        np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=0, atol=1e-6)
    no_base = load_family(str(fts))
    with pytest.raises(OptionError, match="needs a base model"):
        stream_for_view(no_base, find_group(build_catalog(no_base), g.name), "delta")


def test_adapter_bin_and_kohya_names(tmp_path):
    root, base, pms = _family_dir(tmp_path, {"p": dict(r=2, lora_alpha=4)}, safe=False)
    assert (root / "models" / "p" / "adapter_model.bin").exists()
    fam = load_family(str(root))
    g = find_group(build_catalog(fam), "layers.0.self_attn.q_proj")
    np.testing.assert_allclose(merged_delta(fam, g, "p").double().numpy(),
                               _peft_delta(base, pms["p"], "layers.0.self_attn.q_proj"), rtol=0, atol=1e-6)
    # kohya/diffusers naming: lora_down (r x n), lora_up (m x r), alpha scalar; s = alpha / r
    k = tmp_path / "kohya"
    k.mkdir()
    rng = torch.Generator().manual_seed(5)
    down, up = torch.randn(2, 8, generator=rng), torch.randn(6, 2, generator=rng)
    save_file({"te.q_proj.lora_down.weight": down, "te.q_proj.lora_up.weight": up,
               "te.q_proj.alpha": torch.tensor(3.0)}, str(k / "style.safetensors"))
    kf = load_family(str(k))
    kg = find_group(build_catalog(kf), "te.q_proj")
    assert (kg.kind, kg.shape, kg.rank) == ("lora", (6, 8), 2)
    np.testing.assert_allclose(merged_delta(kf, kg, "style").double().numpy(),
                               (1.5 * up.double() @ down.double()).numpy(), rtol=0, atol=1e-6)


def test_module_types_and_layer_range(tmp_path):
    root, _, _ = _family_dir(tmp_path, {"x": dict(r=2, lora_alpha=2)})
    cat = build_catalog(load_family(str(root)))
    assert module_types(cat) == ["layers.{i}.self_attn.q_proj", "layers.{i}.self_attn.v_proj"]
    assert layer_indices(cat) == [0, 1, 2]
    sel = select_groups(cat, types=["layers.{i}.self_attn.v_proj"], layers=(1, 2))
    assert [g.name for g in sel] == ["layers.1.self_attn.v_proj", "layers.2.self_attn.v_proj"]


def test_non_lora_and_dora_adapters(tmp_path):
    root, base, _ = _family_dir(tmp_path, {"ok": dict(r=2, lora_alpha=2), "dora": dict(r=2, lora_alpha=2, use_dora=True)})
    ia3 = get_peft_model(copy.deepcopy(base), IA3Config(target_modules=["q_proj"], feedforward_modules=[]))
    ia3.save_pretrained(root / "models" / "ia3")
    fam = load_family(str(root))
    assert [m.name for m in fam.models] == ["dora", "ok"]
    assert any(s.startswith("ia3: ") and "peft_type IA3 is not supported" in s for s in fam.skipped)
    g = find_group(build_catalog(fam), "layers.0.self_attn.q_proj")
    with pytest.raises(OptionError, match="model 'dora': is a DoRA adapter"):
        stream_for_view(fam, g, "dW")
    with pytest.raises(InputError, match="no usable models"):
        load_family(str(root / "models" / "ia3"))


def test_helper_adapter_writer_is_peft_layout(tmp_path):
    """``tests.helpers.write_adapter`` writes what PEFT loads: rank/alpha patterns and rsLoRA included."""
    base = _base()
    rng = np.random.default_rng(3)
    ranks = {f"layers.{i}.self_attn.{p}": 2 if (i, p) == (1, "q_proj") else 4
             for i in range(3) for p in ("q_proj", "v_proj")}
    factors = {m: (0.5 * rng.standard_normal((r, 8)), 0.5 * rng.standard_normal((6 if "q_proj" in m else 4, r)))
               for m, r in ranks.items()}
    folder = write_adapter(tmp_path / "fam" / "ad", factors, 4, 4, use_rslora=True,
                           rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 3})
    pm = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    cfg = pm.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora) == (4, 4, True)
    fam = load_family(str(tmp_path / "fam"))
    cat = build_catalog(fam)
    for module, (a, b) in factors.items():
        s = (3 if "v_proj" in module else 4) / np.sqrt(ranks[module])
        ref = _peft_delta(base, pm, module)
        exact = s * b.astype(np.float32).astype(np.float64) @ a.astype(np.float32).astype(np.float64)
        np.testing.assert_allclose(ref, exact, rtol=0, atol=1e-6)
        np.testing.assert_allclose(merged_delta(fam, find_group(cat, module), "ad").double().numpy(), ref,
                                   rtol=0, atol=1e-6)
