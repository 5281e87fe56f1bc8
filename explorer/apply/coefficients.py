"""Learning a new task as coefficients only: the shared basis frozen, only per-direction coefficients
trained — against a full LoRA of the same rank, on a task the basis never saw.

For a held-out task T of ``zoo:digits-lora``, the shared bases are fitted on the adapters of every
*other* task (the cached analyses of views A and B of each layer, without T's adapters), then a
rank-r adapter is trained on T with its factors confined to them:

    A = C_A V_k^T   (C_A: r x k, trainable)        B = U_k C_B   (C_B: k x r, trainable)

— exactly the coefficient tensors compression stores (:mod:`explorer.apply.basis`), 2 r k numbers
per layer instead of LoRA's r (n + m).  C_A starts from PEFT's A initialisation projected onto V_k
and C_B at zero (LoRA's B = 0), and both are trained by the zoo's own LoRA recipe (Adam, the same
steps, learning rate and batches) as the full LoRA beside them.  Baselines: the frozen base alone,
the family's mean update (the critics' control: no training at all), and the zoo's own adapters
trained on T.  Every accuracy is the mean over ``seeds`` trainings (min and max kept).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from explorer.core.errors import OptionError
from explorer.core.progress import ProgressFn
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze_cached
from explorer.pipeline.cache import ResultCache
from explorer.sources.resolve import load_family
from explorer.zoo import digits
from explorer.zoo import digits_data as dd
from explorer.zoo import train as tr
from explorer.zoo.evaluate import LoraEvaluator
from explorer.zoo.evaluators import evaluator_for

SOURCE = "zoo:digits-lora"


@dataclass(frozen=True)
class CoefficientOptions:
    """What to train (frozen: a cache key).

    Parameters
    ----------
    ks : tuple of int
        Directions of the shared bases (each capped by the bases' size).
    rank : int
        r of both the coefficient adapter and the full LoRA.
    seeds : tuple of int
        One training per seed (its A init and minibatches).
    steps, lr, batch : the zoo's LoRA recipe by default.
    """

    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    rank: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = digits.LORA_STEPS
    lr: float = digits.LORA_LR
    batch: int = digits.BATCH

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise OptionError(f"ks must be integers >= 1, got {self.ks!r}")
        if self.rank < 1 or not self.seeds or self.steps < 1:
            raise OptionError("rank, seeds and steps must be positive")


def _bases(task: str, cache: ResultCache | None) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Per layer: V (in x K) from view A and U (out x K) from view B, fitted without T's adapters."""
    fam = load_family(SOURCE)
    md = fam.metadata.set_index("name")
    held = [m.name for m in fam.models if md.loc[m.name, "task"] == task]
    if not held:
        tasks = sorted(set(md["task"]))
        raise OptionError(f"{SOURCE} has no adapter trained on task {task!r} (e.g. {', '.join(tasks[:4])} ...)")
    fit = fam.without({n: f"held out: trained on {task}" for n in held})
    vs, us = [], []
    for layer in tr.LAYERS:
        vs.append(np.asarray(analyze_cached(fit, layer, "A", SpectralOptions(), metrics=None, cache=cache).spectrum.basis))
        us.append(np.asarray(analyze_cached(fit, layer, "B", SpectralOptions(), metrics=None, cache=cache).spectrum.basis))
    return vs, us, held


def _base_stack(ev: LoraEvaluator) -> tr.MLPStack:
    base = ev.base
    return tr.MLPStack([base[f"{n}.weight"].float()[None] for n in tr.LAYERS],
                       [base[f"{n}.bias"].float()[None] for n in tr.LAYERS])


def _accuracies(base: tr.MLPStack, lora: tr.LoraStack, data) -> list[float]:
    m = lora.scale.shape[0]
    return tr.accuracy(lora.merged(base), [b.expand(m, -1) for b in base.biases], data)


def coefficient_training(task: str, options: CoefficientOptions = CoefficientOptions(),
                         cache: ResultCache | None = None, progress: ProgressFn | None = None) -> pd.DataFrame:
    """Trainable parameters against accuracy on a held-out task: coefficients at each k, full LoRA.

    Parameters
    ----------
    task : str
        A digits task (e.g. ``subset-0169``); its adapters are left out of the bases' fit.

    Returns
    -------
    DataFrame
        One row per method: ``method`` (``coefficients`` / ``full LoRA`` / ``base (no training)`` /
        ``mean update (no training)`` / ``zoo adapters trained on T``), ``k``, ``trainable``
        (parameters trained), ``accuracy`` (mean over seeds), ``accuracy_min``, ``accuracy_max``.
    """
    ev = evaluator_for(SOURCE)
    dd.get_task(task)  # an unknown task: one message naming it
    vs, us, held = _bases(task, cache)
    base = _base_stack(ev)
    seeds, r, s_count = list(options.seeds), options.rank, len(options.seeds)
    data = dd.stack_tasks([task] * s_count)
    alpha = digits.LORA_ALPHA
    rows = []

    def row(method, k, trainable, accs):
        rows.append({"method": method, "k": k, "trainable": int(trainable), "accuracy": float(np.mean(accs)),
                     "accuracy_min": float(np.min(accs)), "accuracy_max": float(np.max(accs))})

    init = tr.init_lora([digits.LORA_SEED + 7 * s for s in seeds], [r] * s_count, alpha)
    steps = [("full LoRA", None)] + [("coefficients", k) for k in sorted(set(options.ks))]
    for j, (method, k) in enumerate(steps):
        if progress is not None:
            progress(j, len(steps), f"training on {task}: {method}" + (f" k={k}" if k else ""))
        if k is None:
            trained = tr.train_lora(base, init, data, seeds, options.steps, options.lr, options.batch)
            row(method, None, sum(r * (a + b) for a, b in zip(tr.SIZES[:-1], tr.SIZES[1:])),
                _accuracies(base, trained, data))
            continue
        kk = [min(k, v.shape[1], u.shape[1]) for v, u in zip(vs, us)]
        vk = [torch.from_numpy(v[:, :c].copy()).float() for v, c in zip(vs, kk)]
        uk = [torch.from_numpy(u[:, :c].copy()).float() for u, c in zip(us, kk)]
        ca = [(a @ v).detach().clone().requires_grad_(True) for a, v in zip(init.a, vk)]  # (S, r, k)
        cb = [torch.zeros(s_count, c, r, requires_grad=True) for c in kk]               # (S, k, r)

        def stack() -> tr.LoraStack:
            return tr.LoraStack([c @ v.T for c, v in zip(ca, vk)], [u @ c for c, u in zip(cb, uk)], init.scale,
                                init.ranks)

        tr.fit_params(ca + cb, lambda x: tr.forward_lora(base, stack(), x), data, seeds, options.steps, options.lr,
                      options.batch, None, "")
        with torch.no_grad():
            row(method, k, sum(2 * r * c for c in kk), _accuracies(base, stack(), data))
    if progress is not None:
        progress(len(steps), len(steps), f"training on {task}")
    zero = tr.LoraStack([torch.zeros(1, r, n) for n in tr.SIZES[:-1]], [torch.zeros(1, m, r) for m in tr.SIZES[1:]],
                        torch.ones(1), [r])
    row("base (no training)", None, 0, _accuracies(base, zero, dd.stack_tasks([task])))
    fit_names = [n for n in ev.models if n not in set(held)]
    mean = {f"{n}.weight": ev.base[f"{n}.weight"].float()
            + torch.stack([ev.weights(m)[f"{n}.delta"] for m in fit_names]).mean(0) for n in tr.LAYERS}
    mean_state = {**{k: v.float() for k, v in ev.base.items()}, **mean}
    row("mean update (no training)", None, 0, list(ev.state_accuracies([mean_state], [task])[0]))
    ranks = ev.metadata.set_index("name").loc[held, "rank"].astype(int)
    per_rank = sum(a + b for a, b in zip(tr.SIZES[:-1], tr.SIZES[1:]))
    row("zoo adapters trained on T", None, int(round(ranks.mean() * per_rank)), [ev.stored_accuracy(n) for n in held])
    return pd.DataFrame(rows)
