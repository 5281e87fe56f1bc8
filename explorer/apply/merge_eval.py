"""The zoo's merge table: every merged model, and every chosen model itself, on every task.

For the chosen models' tasks T_1..T_t, each row is one model — a merge (one per method: the
paper's subspace rule, task arithmetic, TIES, and the critics' control, the mean) or one of the
chosen models as trained — and each column one task: test accuracy.  ``expert`` is the accuracy
of the chosen models trained on that task (their mean when several were), and ``normalized`` =
accuracy / expert, the merging literature's usual summary; ``mean`` averages over the tasks.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from explorer.apply.merge import Merged, merged_accuracy_states
from explorer.core.errors import OptionError
from explorer.zoo.evaluators import evaluator_for


def merge_accuracy(source: str, merges: Sequence[Merged]) -> tuple[pd.DataFrame | None, list[str]]:
    """Long table (one row per (model, task)): ``model``, ``kind`` (merge / model), ``task``,
    ``accuracy``, ``expert``, ``normalized``, ``own`` (the model's own task); and notes.

    Returns ``(None, notes)`` for a family without an evaluator that can do it (not a zoo family,
    or MiniLM, whose adapters carry per-task heads).
    """
    ev = evaluator_for(source)
    if ev is None:
        return None, ["no accuracy: the family has no evaluator (only the built-in zoo has)"]
    if not ev.cross_task:
        return None, [f"no accuracy: zoo:{ev.family} cannot evaluate weights on other tasks"]
    if not merges:
        raise OptionError("nothing was merged")
    models = list(merges[0].models)
    tasks = list(dict.fromkeys(ev.task_of(m) for m in models))
    base = ev.base_state()
    rows, states, labels, notes = [], [], [], []
    for mg in merges:
        st = merged_accuracy_states(mg, base, ev.layers)
        if st is None:
            notes.append(f"{mg.options.method}: no accuracy — without a base model every layer must be merged "
                         f"({', '.join(ev.layers)})")
            continue
        states.append(st)
        labels.append((mg.options.method, "merge", None))
    for m in models:
        states.append(ev.model_state(m))
        labels.append((m, "model", ev.task_of(m)))
    acc = ev.state_accuracies(states, tasks)
    own = [j for j, (_, kind, _) in enumerate(labels) if kind == "model"]
    expert = {t: float(acc[[j for j in own if labels[j][2] == t], i].mean()) for i, t in enumerate(tasks)}
    for j, (name, kind, task) in enumerate(labels):
        for i, t in enumerate(tasks):
            a = float(acc[j, i])
            rows.append({"model": name, "kind": kind, "task": t, "accuracy": a, "expert": expert[t],
                         "normalized": a / expert[t] if expert[t] > 0 else float("nan"), "own": task == t})
    return pd.DataFrame(rows), notes


def merge_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean accuracy and mean normalized accuracy over the tasks (merges first)."""
    g = table.groupby(["model", "kind"], sort=False)[["accuracy", "normalized"]].mean().reset_index()
    return g.sort_values("kind", kind="stable", key=lambda s: s.map({"merge": 0, "model": 1})).reset_index(drop=True)
