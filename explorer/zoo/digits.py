"""The trained digits families of the zoo (64-128-128-10 MLPs on scikit-learn's digits).

- ``digits-mlp-scratch``: 60 MLPs, each from its own random init, one per task;
- ``digits-mlp-finetune``: 60 full fine-tunes of one shared pretrained base, one per task
  (the setting of the paper's ViTs); the base is stored as ``base/model.safetensors``;
- ``digits-lora``: 120 LoRA adapters (rank 4-8, alpha 16, on all three layers) on the same
  frozen base, in PEFT's layout, one per task in each of two init groups: ``shared-A`` (every
  adapter starts from one common A) and ``independent-A`` (each adapter draws its own A);
- ``digits-random-init``: 60 untrained MLPs (torch's default init), the null family.

Every model has metadata: ``task``, ``task_group``, ``seed``, ``init_group``,
``test_accuracy`` (on its task's fixed test split) and ``chance``.  The 60 tasks are
:data:`explorer.zoo.digits_data.TASKS`.  Everything is seeded, so a build is reproducible.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
from safetensors.torch import save_file

from explorer.core.progress import ProgressFn
from explorer.zoo import digits_data as dd
from explorer.zoo import train as tr
from explorer.zoo.peft_layout import write_adapter
from explorer.zoo.recipe import ZooRecipe

BASE_SEED = 424242
BASE_STEPS = 600
SCRATCH_SEED = 1000
SCRATCH_STEPS, SCRATCH_LR = 300, 3e-3
FINETUNE_SEED = 2000
FINETUNE_STEPS, FINETUNE_LR = 200, 2e-3
LORA_SEED = 3000
LORA_SHARED_A_SEED = 3999
LORA_STEPS, LORA_LR = 250, 8e-3
LORA_ALPHA = 16.0
LORA_RANKS = (4, 5, 6, 7, 8)
RANDOM_SEED = 5000
N_RANDOM = 60
BATCH = 32
# Untrained models are all evaluated on the ten-digit task.
RANDOM_TASK = "all"

FAMILY_NAMES = ("digits-mlp-scratch", "digits-mlp-finetune", "digits-lora", "digits-random-init")


def _task_names() -> list[str]:
    return [t.name for t in dd.TASKS]


def _rows(prefix: str, seeds: list[int], init_group: str, accs: list[float], tasks: list[str]) -> list[dict]:
    rows = []
    for i, (seed, acc, task) in enumerate(zip(seeds, accs, tasks)):
        data = dd.task_data(task)
        rows.append({
            "name": f"{prefix}-{i:03d}-{task}",
            "task": task,
            "task_group": dd.get_task(task).group,
            "seed": seed,
            "init_group": init_group,
            "test_accuracy": acc,
            "chance": round(data.chance, 6),
        })
    return rows


def _write_dense(folder: Path, stack: tr.MLPStack, rows: list[dict], progress: ProgressFn | None, label: str) -> None:
    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        save_file(stack.state_dict(i), str(models / f"{row['name']}.safetensors"), metadata={"format": "pt"})
        if progress:
            progress(i + 1, len(rows), label)
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)


def write_base(folder: Path) -> None:
    """Store the shared pretrained base as ``folder/base/model.safetensors``."""
    (folder / "base").mkdir(parents=True, exist_ok=True)
    save_file(pretrained_base().state_dict(0), str(folder / "base" / "model.safetensors"), metadata={"format": "pt"})


@lru_cache(maxsize=1)
def pretrained_base() -> tr.MLPStack:
    """The shared base: one MLP trained on the ten digits (seed :data:`BASE_SEED`); a stack of 1."""
    data = dd.stack_tasks([RANDOM_TASK])
    return tr.train_dense(tr.init_stack([BASE_SEED]), data, [BASE_SEED], BASE_STEPS, 3e-3, BATCH)


def build_scratch(folder: Path, progress: ProgressFn | None = None) -> None:
    """Write ``digits-mlp-scratch``: one MLP per task, each from its own seed."""
    tasks = _task_names()
    seeds = [SCRATCH_SEED + i for i in range(len(tasks))]
    data = dd.stack_tasks(tasks)
    stack = tr.train_dense(tr.init_stack(seeds), data, seeds, SCRATCH_STEPS, SCRATCH_LR, BATCH, progress,
                           f"digits-mlp-scratch: training {len(tasks)} MLPs")
    accs = tr.accuracy(stack.weights, stack.biases, data)
    _write_dense(folder, stack, _rows("scratch", seeds, "random", accs, tasks), progress, "digits-mlp-scratch: writing")


def build_finetune(folder: Path, progress: ProgressFn | None = None) -> None:
    """Write ``digits-mlp-finetune``: every model starts from :func:`pretrained_base`."""
    tasks = _task_names()
    seeds = [FINETUNE_SEED + i for i in range(len(tasks))]
    if progress:
        progress(0, 1, "digits-mlp-finetune: pretraining the base")
    base = pretrained_base()
    m = len(tasks)
    start = tr.MLPStack([w.expand(m, -1, -1) for w in base.weights], [b.expand(m, -1) for b in base.biases])
    data = dd.stack_tasks(tasks)
    stack = tr.train_dense(start, data, seeds, FINETUNE_STEPS, FINETUNE_LR, BATCH, progress,
                           f"digits-mlp-finetune: fine-tuning {m} MLPs")
    accs = tr.accuracy(stack.weights, stack.biases, data)
    write_base(folder)
    _write_dense(folder, stack, _rows("finetune", seeds, "pretrained-base", accs, tasks), progress,
                 "digits-mlp-finetune: writing")


def lora_plan() -> list[dict]:
    """One entry per adapter: task, rank, training seed, A-init seed and init group."""
    plan = []
    tasks = _task_names()
    for g, group in enumerate(("shared-A", "independent-A")):
        for i, task in enumerate(tasks):
            seed = LORA_SEED + g * len(tasks) + i
            plan.append({
                "task": task, "rank": LORA_RANKS[i % len(LORA_RANKS)], "seed": seed, "init_group": group,
                "a_init_seed": LORA_SHARED_A_SEED if group == "shared-A" else seed,
            })
    return plan


def build_lora(folder: Path, progress: ProgressFn | None = None) -> None:
    """Write ``digits-lora``: 120 PEFT adapters on the frozen base, in two A-init groups."""
    plan = lora_plan()
    tasks = [p["task"] for p in plan]
    seeds = [p["seed"] for p in plan]
    ranks = [p["rank"] for p in plan]
    if progress:
        progress(0, 1, "digits-lora: pretraining the base")
    base = pretrained_base()
    data = dd.stack_tasks(tasks)
    lora = tr.init_lora([p["a_init_seed"] for p in plan], ranks, LORA_ALPHA)
    lora = tr.train_lora(base, lora, data, seeds, LORA_STEPS, LORA_LR, BATCH, progress,
                         f"digits-lora: training {len(plan)} adapters")
    m = len(plan)
    accs = tr.accuracy(lora.merged(base), [b.expand(m, -1) for b in base.biases], data)
    write_base(folder)
    rows = []
    for i, (p, acc) in enumerate(zip(plan, accs)):
        short = "shared" if p["init_group"] == "shared-A" else "indep"
        name = f"lora-{short}-{i % len(dd.TASKS):03d}-{p['task']}"
        write_adapter(folder / "models" / name, lora.factors(i), p["rank"], LORA_ALPHA)
        rows.append({
            "name": name, "task": p["task"], "task_group": dd.get_task(p["task"]).group, "seed": p["seed"],
            "init_group": p["init_group"], "a_init_seed": p["a_init_seed"], "rank": p["rank"],
            "lora_alpha": LORA_ALPHA, "test_accuracy": acc, "chance": round(dd.task_data(p["task"]).chance, 6),
        })
        if progress:
            progress(i + 1, m, "digits-lora: writing adapters")
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)


def build_random(folder: Path, progress: ProgressFn | None = None) -> None:
    """Write ``digits-random-init``: untrained MLPs, evaluated on the ten-digit task."""
    seeds = [RANDOM_SEED + i for i in range(N_RANDOM)]
    tasks = [RANDOM_TASK] * N_RANDOM
    stack = tr.init_stack(seeds)
    accs = tr.accuracy(stack.weights, stack.biases, dd.stack_tasks(tasks))
    rows = _rows("random", seeds, "random", accs, tasks)
    for r in rows:
        r["task_group"] = "untrained"
    _write_dense(folder, stack, rows, progress, "digits-random-init: writing")


RECIPES: tuple[ZooRecipe, ...] = (
    ZooRecipe(
        name="digits-mlp-scratch", version="1", build=build_scratch,
        description="60 digits MLPs (64-128-128-10) from independent random inits, one per task",
    ),
    ZooRecipe(
        name="digits-mlp-finetune", version="1", build=build_finetune,
        description="60 full fine-tunes of one pretrained digits MLP, one per task (base in base/)",
    ),
    ZooRecipe(
        name="digits-lora", version="1", build=build_lora,
        description="120 PEFT LoRA adapters (rank 4-8) on a frozen digits MLP: shared-A vs independent-A inits",
    ),
    ZooRecipe(
        name="digits-random-init", version="1", build=build_random,
        description="60 untrained digits MLPs (torch default init): the null family",
    ),
)
