"""Coefficients only (explorer.apply.coefficients): a held-out zoo task learned with the shared
bases frozen, against a full LoRA of the same rank."""
from __future__ import annotations

import pytest

from explorer import InputError, OptionError
from explorer.apply.coefficients import CoefficientOptions, coefficient_training
from explorer.pipeline.cache import ResultCache
from explorer.zoo import train as tr


def test_trainable_parameters_against_accuracy_on_a_held_out_task(tmp_path):
    opts = CoefficientOptions(ks=(2, 32), rank=4, seeds=(0, 1), steps=120)
    table = coefficient_training("rot+20", opts, cache=ResultCache(tmp_path))
    by = {(r.method, r.k if r.k == r.k else None): r for r in table.itertuples()}
    full = by[("full LoRA", None)]
    assert full.trainable == 4 * sum(a + b for a, b in zip(tr.SIZES[:-1], tr.SIZES[1:]))
    k2, k32 = by[("coefficients", 2)], by[("coefficients", 32)]
    # 2 r k per layer, k capped by the smaller basis (layers.2's outputs: 10 directions).
    assert k2.trainable == 2 * 4 * (2 + 2 + 2) and k32.trainable == 2 * 4 * (32 + 32 + 10)
    # More directions learn more, and the rotation task needs training: both beat the frozen base.
    assert k32.accuracy > k2.accuracy
    base = by[("base (no training)", None)]
    assert full.accuracy > base.accuracy and k32.accuracy > base.accuracy
    assert {"mean update (no training)", "zoo adapters trained on T"} <= set(table.method)
    assert table["accuracy"].between(0, 1).all()
    assert (table["accuracy_min"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_max"]).all()


def test_bad_tasks_and_options_are_refused():
    with pytest.raises(OptionError, match="ks must be integers"):
        CoefficientOptions(ks=(0,))
    with pytest.raises(InputError, match="digits task 'nope' does not exist"):
        coefficient_training("nope")

