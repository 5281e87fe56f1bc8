"""Test helpers shared by every test module (importable as ``tests.helpers``).

The one place for: decoding Plotly figures, writing a family (:func:`write_family`), writing a
PEFT LoRA adapter (:func:`write_adapter`), the float64 explicit-unfolding reference
(:func:`unfolding`, :func:`reference_gram`, :func:`reference_spectrum`, with the three centerings
of DESIGN.md), and the synthetic families several engine tests share.  Test modules import from
here (and from hostile.py / cache_workers.py), never from each other: tests/test_suite_layout.py.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file


def start_app(page: str, **query):
    """Open ``page`` cold in a fresh AppTest session, with ``query`` as URL parameters.

    The app is loaded from app.py (so the page registry is the app's) and switched to ``page``
    before anything runs: app.py itself never executes first.
    """
    from streamlit.testing.v1 import AppTest  # only the app tests pay for importing it

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    if page != "app.py":
        at.switch_page(page)
    if query:
        at.query_params.update(query)
    return at.run()


def decode_plotly(obj: Any) -> Any:
    """Recursively turn Plotly typed arrays ``{"dtype": "f8", "bdata": "..."}`` into numpy arrays.

    Plotly 6+/7 sends numpy data base64-encoded; assertions want plain arrays.
    """
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            shape = obj.get("shape")
            if shape:
                dims = [int(s) for s in str(shape).replace("(", "").replace(")", "").split(",") if s.strip()]
                arr = arr.reshape(dims)
            return arr
        return {k: decode_plotly(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_plotly(v) for v in obj]
    return obj


def figure_json(element) -> dict:
    """The decoded figure dict of an AppTest ``plotly_chart`` element (its ``proto.spec``)."""
    return decode_plotly(json.loads(element.proto.spec))


def trace(fig: dict, name: str) -> dict:
    """The first trace of a decoded figure whose ``name`` is ``name``."""
    for t in fig["data"]:
        if t.get("name") == name:
            return t
    raise KeyError(f"no trace named {name!r}; have {[t.get('name') for t in fig['data']]}")


def write_family(
    folder: Path,
    matrices: Mapping[str, np.ndarray],
    labels: Mapping[str, Mapping[str, object]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a tiny family: one safetensors file per model, plus an optional metadata.csv.

    Parameters
    ----------
    folder : Path
        Created if missing.
    matrices : mapping model name -> {tensor name: array} or -> array
        A bare array is stored as ``layers.0.weight``.
    labels : mapping model name -> {column: value}, optional
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensors in matrices.items():
        if isinstance(tensors, np.ndarray):
            tensors = {"layers.0.weight": tensors}
        save_file({k: torch.as_tensor(np.asarray(v)).to(dtype).contiguous() for k, v in tensors.items()},
                  str(folder / f"{name}.safetensors"))
    if labels:
        pd.DataFrame([{"name": k, **v} for k, v in labels.items()]).to_csv(folder / "metadata.csv", index=False)
    return folder


# ------------------------------------------------------------------------------ LoRA adapters
PEFT_PREFIX = "base_model.model."


def _factor(x: Any, dtype: torch.dtype | None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return (t if dtype is None else t.to(dtype)).contiguous()


def write_adapter(
    folder: Path,
    factors: Mapping[str, tuple[Any, Any]],
    r: int,
    alpha: float | None = None,
    *,
    use_rslora: bool = False,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    target_modules: Sequence[str] | None = None,
    dtype: torch.dtype | None = torch.float32,
    prefix: str = PEFT_PREFIX,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write one LoRA adapter folder in PEFT's own layout; return the folder.

    ``adapter_model.safetensors`` holds ``<prefix><module>.lora_A.weight`` (r x in) and
    ``...lora_B.weight`` (out x r); ``adapter_config.json`` holds what ``PeftModel.save_pretrained``
    writes for a plain LoRA, so ``PeftModel.from_pretrained(base, folder)`` loads it.

    Parameters
    ----------
    folder : Path
        Created if missing.
    factors : mapping module name -> (A, B)
        numpy arrays or tensors; ``module`` without the prefix (e.g. ``"blk.0.fc"``).
    r, alpha : int, float
        ``r`` and ``lora_alpha`` (default ``alpha = r``); PEFT scales ΔW = s B A with
        s = alpha / r, or alpha / sqrt(r) with ``use_rslora``.
    rank_pattern, alpha_pattern : mapping module key -> int / float, optional
        PEFT's per-module overrides of ``r`` / ``lora_alpha``.
    target_modules : list of str, optional
        Default: the last name component of every module.
    dtype : torch.dtype or None
        The stored dtype (None keeps the factors' own).
    extra_config : mapping, optional
        Keys written over the config (e.g. ``{"use_dora": True}``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for module, (a, b) in factors.items():
        tensors[f"{prefix}{module}.lora_A.weight"] = _factor(a, dtype)
        tensors[f"{prefix}{module}.lora_B.weight"] = _factor(b, dtype)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = target_modules if target_modules is not None else {m.rsplit(".", 1)[-1] for m in factors}
    cfg = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "revision": None,
        "inference_mode": True, "r": r, "lora_alpha": r if alpha is None else alpha,
        "target_modules": sorted(targets), "lora_dropout": 0.0, "fan_in_fan_out": False, "bias": "none",
        "use_rslora": use_rslora, "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": dict(rank_pattern or {}), "alpha_pattern": dict(alpha_pattern or {}),
        **(extra_config or {}),
    }
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return folder


# ------------------------------------------------------------------- explicit-unfolding reference
def center_offset(xs: Sequence[np.ndarray], center: str) -> np.ndarray | float:
    """What centering ``center`` subtracts from each of the side matrices ``xs`` (float64).

    ``xs`` are laid out as in out-mode (their columns are the stacked vectors): ``model``
    subtracts the mean matrix, ``vector`` the mean column of the unfolding ``[x_1 ... x_N]``.
    For 1-D ``xs`` (flattened models) ``model`` subtracts the mean row vector.
    """
    if center == "none":
        return 0.0
    if center == "model":
        return np.stack([np.asarray(x, np.float64) for x in xs]).mean(axis=0)
    if center == "vector":
        return np.concatenate([np.asarray(x, np.float64) for x in xs], axis=1).mean(axis=1, keepdims=True)
    raise ValueError(f"unknown center {center!r}")


def centered_sides(ws: Sequence[Any], mode: str, center: str = "none") -> list[np.ndarray]:
    """The blocks of the explicit unfolding, centered: W_i - Z (out), W_iᵀ - Z (in), vec(W_i) - z (model).

    In model mode ``vector`` is the same as ``model`` (the mean row of the N x mn unfolding).
    Without centering the W_i may differ in their stacked dimension (mixed LoRA ranks).
    """
    ws = [np.asarray(w, np.float64) for w in ws]
    if mode == "out":
        xs = ws
    elif mode == "in":
        xs = [w.T for w in ws]
    elif mode == "model":
        xs = [w.reshape(-1) for w in ws]
        center = "none" if center == "none" else "model"
    else:
        raise ValueError(f"unknown mode {mode!r}")
    z = center_offset(xs, center)
    return [x - z for x in xs]


def unfolding(ws: Sequence[Any], mode: str, center: str = "none") -> np.ndarray:
    """The explicitly centered unfolding whose squared singular values the engine returns (float64).

    out: [W_1 ... W_N] (m x Nn); in: [W_1; ...; W_N]ᵀ (n x Nm), so its left singular vectors
    are the input basis; model: the N x mn matrix of flattened models.
    """
    xs = centered_sides(ws, mode, center)
    return np.stack(xs) if mode == "model" else np.concatenate(xs, axis=1)


def reference_gram(ws: Sequence[Any], mode: str, center: str = "none") -> np.ndarray:
    """G (out, m x m), H (in, n x n) or K (model, N x N) from the explicit unfolding U: U Uᵀ."""
    u = unfolding(ws, mode, center)
    return u @ u.T


def reference_spectrum(ws: Sequence[Any], mode: str, center: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """``(eigenvalues, basis)`` of the mode's Gram by a float64 scipy SVD of the explicit unfolding.

    Eigenvalues are the squared singular values, descending (min of the unfolding's sides of
    them); the basis is the thin left singular vectors, one column per eigenvalue.
    """
    import scipy.linalg as sl

    u, s, _ = sl.svd(unfolding(ws, mode, center), full_matrices=False)
    return s**2, u


# ------------------------------------------------------------------------ synthetic families
def planted_matrices(n=12, m=20, k=16, rank=3, noise=1e-3, seed=1) -> list[np.ndarray]:
    """Matrices sharing a rank-`rank` output/input subspace, with strong decaying weights."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, rank)))[0]
    v = np.linalg.qr(rng.standard_normal((k, rank)))[0]
    weights = np.array([10.0, 5.0, 2.0])[:rank]
    return [u @ np.diag(weights * (1 + 0.1 * rng.standard_normal(rank))) @ v.T
            + noise * rng.standard_normal((m, k)) for _ in range(n)]


def lora_factors(n=8, m=14, k=11, ranks=(1, 2, 3), seed=0, shared=False) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """``(B, A, s)`` of adapters with mixed ranks and scales; ``shared`` gives them a dominant common direction."""
    rng = np.random.default_rng(seed)
    out = []
    common_b = rng.standard_normal((m, 1)) * 5
    for i in range(n):
        r = ranks[i % len(ranks)]
        b = rng.standard_normal((m, r))
        a = rng.standard_normal((r, k))
        if shared:
            b[:, :1] = common_b
        out.append((torch.tensor(b), torch.tensor(a), float(rng.uniform(0.5, 2.0))))
    return out


def dense_deltas(factors) -> list[np.ndarray]:
    """ΔW_i = s_i B_i A_i as numpy arrays."""
    return [s * (b @ a).numpy() for b, a, s in factors]
