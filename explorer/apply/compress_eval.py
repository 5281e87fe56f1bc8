"""The zoo's accuracy from the compressed form, against k, beside the mean-only reconstruction.

Each model's compressed layer group (LoRA: both factors, rebuilt from their first k coefficients;
dense: the weight, or the base plus the rebuilt delta) is put back into the model, and the family's
evaluator measures its test accuracy on its own task.  The baseline puts the family's *mean* layer
(the mean weight; LoRA: base + the mean update) into every model: a compression that keeps no
more accuracy than the mean keeps nothing the mean would not.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from explorer.apply.compress import CompressedView
from explorer.core.errors import OptionError
from explorer.zoo.evaluators import evaluator_for


def _replacement(ev, e: CompressedView, i: int, k: int) -> tuple[str, torch.Tensor]:
    layer, w = e.layer, e.rebuild(i, min(k, e.k)).float()
    if e.view in ("A", "B"):
        return f"{layer}.lora_{e.view}.weight", w
    if e.view == "delta":
        return f"{layer}.weight", ev.base[f"{layer}.weight"].float() + w
    return f"{layer}.weight", w


def compressed_accuracy(source: str, entries: Sequence[CompressedView], ks: Sequence[int]
                        ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Accuracy of every model with its compressed layer groups rebuilt from k directions, for each k.

    Parameters
    ----------
    source : str
        The zoo family (``zoo:NAME``); other sources have no evaluator (None is returned).
    entries : list of CompressedView
        The compressed views (LoRA: A and B of each group), of one or several groups: every one
        is rebuilt and put back at once.
    ks : list of int
        Each in 1..max k of the entries (a view keeping fewer uses all it keeps).

    Returns
    -------
    (curve, mean_only) or None
        ``curve``: columns ``model``, ``k``, ``accuracy``, ``stored_accuracy``; ``mean_only``:
        ``model``, ``accuracy``, ``stored_accuracy`` (every compressed group given the family's
        mean layer).
    """
    ev = evaluator_for(source)
    if ev is None:
        return None
    if not entries:
        raise OptionError("accuracy from the compressed form needs at least one compressed view")
    layers = list(dict.fromkeys(e.layer for e in entries))
    bad = [name for name in layers if name not in ev.layers]
    if bad:
        raise OptionError(f"layer {bad[0]!r} of {source} cannot be evaluated; use one of {', '.join(ev.layers[:6])}"
                          + (" ..." if len(ev.layers) > 6 else ""))
    names = [n for n in entries[0].names if all(n in e.names for e in entries)]
    index = [{n: j for j, n in enumerate(e.names)} for e in entries]
    rows = []
    for k in ks:
        rep = {n: dict(_replacement(ev, e, ix[n], int(k)) for e, ix in zip(entries, index)) for n in names}
        accs = ev.accuracies(rep, names)
        rows += [{"model": n, "k": int(k), "accuracy": accs[n], "stored_accuracy": ev.stored_accuracy(n)} for n in names]
    lora = entries[0].view in ("A", "B")
    mean = {}
    for layer in layers:
        key = f"{layer}.delta" if lora else f"{layer}.weight"
        m = torch.stack([ev.weights(n)[key].float() for n in names]).mean(0)
        mean[f"{layer}.weight"] = ev.base[f"{layer}.weight"].float() + m if lora else m
    accs = ev.accuracies({n: dict(mean) for n in names}, names)
    mean_only = pd.DataFrame([{"model": n, "accuracy": accs[n], "stored_accuracy": ev.stored_accuracy(n)}
                              for n in names])
    return pd.DataFrame(rows), mean_only
