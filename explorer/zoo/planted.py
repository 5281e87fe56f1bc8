"""``zoo:planted`` — a synthetic family with a known answer.

Each model's layer ``l`` is ``W_i = U_l diag(s_l) C_i V_l^T + sigma E_i``: every model shares the
rank-``k_l`` output basis ``U_l`` and input basis ``V_l``, mixes them with its own random core
``C_i`` (k x k), and adds iid noise.  The noise carries ~3 % of the energy, so the out- and in-mode
spectra have exactly ``k_l`` large eigenvalues and k at 90 % equals ``k_l``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from explorer.core.progress import ProgressFn
from explorer.zoo.recipe import ZooRecipe

N_MODELS = 24
SEED = 20251205
# (name, out-features m, in-features n, planted rank k)
LAYERS: tuple[tuple[str, int, int, int], ...] = (
    ("layers.0", 64, 48, 4),
    ("layers.1", 48, 64, 6),
    ("layers.2", 32, 48, 3),
)
NOISE_SHARE = 0.03
GROUPS = ("alpha", "beta")


def planted_rank(layer: str) -> int:
    """The rank planted in ``layer`` (the answer a test must recover)."""
    return {name: k for name, _, _, k in LAYERS}[layer]


def planted_bases(layer: str) -> tuple[np.ndarray, np.ndarray]:
    """The planted output basis U (m x k) and input basis V (n x k) of ``layer``."""
    rng = np.random.default_rng(SEED)
    for name, m, n, k in LAYERS:
        u = np.linalg.qr(rng.standard_normal((m, k)))[0]
        v = np.linalg.qr(rng.standard_normal((n, k)))[0]
        if name == layer:
            return u, v
    raise KeyError(layer)


def _build(folder: Path, progress: ProgressFn | None) -> None:
    models = folder / "models"
    models.mkdir(parents=True)
    bases = {name: planted_bases(name) for name, *_ in LAYERS}
    rows = []
    for i in range(N_MODELS):
        seed = SEED + 1 + i
        rng = np.random.default_rng(seed)
        group = GROUPS[i % len(GROUPS)]
        tensors = {}
        for name, m, n, k in LAYERS:
            u, v = bases[name]
            # Mildly decaying strengths: the last planted direction still holds > 10 % of the energy.
            s = np.linspace(1.0, 0.7, k)
            core = rng.standard_normal((k, k))
            if group == "beta":
                core[0] *= 1.3  # groups differ a little, so colouring by group shows something
            signal = u @ (s[:, None] * core) @ v.T
            sig2 = (signal**2).sum()
            sigma = np.sqrt(NOISE_SHARE / (1 - NOISE_SHARE) * sig2 / (m * n))
            w = signal + sigma * rng.standard_normal((m, n))
            tensors[f"{name}.weight"] = torch.from_numpy(w.astype(np.float32))
            tensors[f"{name}.bias"] = torch.zeros(m, dtype=torch.float32)
        mname = f"planted-{i:02d}"
        save_file(tensors, str(models / f"{mname}.safetensors"))
        rows.append({"name": mname, "group": group, "seed": seed, "task": f"task-{i % 6}"})
        if progress:
            progress(i + 1, N_MODELS, "planted: writing models")
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)


RECIPES: tuple[ZooRecipe, ...] = (
    ZooRecipe(
        name="planted",
        version="1",
        description=f"{N_MODELS} synthetic models sharing planted rank-k bases (k = 4, 6, 3) plus 3 % noise",
        build=_build,
    ),
)
