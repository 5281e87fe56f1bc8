"""The side modes' model kernel from the models' stack (explorer.metrics.moments.stack_kernel) and
the stack's storage (explorer.metrics.moments.stack_entry), against direct float64 products."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.metrics import moments
from explorer.metrics.moments import stack_entry, stack_kernel


@pytest.mark.parametrize("centred", [False, True])
def test_stack_kernel_equals_the_stacked_product(monkeypatch, centred):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 6, 5))
    stack = [torch.from_numpy(m.reshape(-1)) for m in x]
    z = torch.from_numpy(x.mean(axis=0)) if centred else None
    flat = x.reshape(7, -1) - (x.mean(axis=0).reshape(-1) if centred else 0.0)
    ref = flat @ flat.T
    # Slabs of 4 columns (of 30): the kernel is summed over several slabs, ragged at the end.
    monkeypatch.setattr(moments, "KERNEL_SLAB_BYTES", 8 * 7 * 4)
    np.testing.assert_allclose(stack_kernel(stack, z).numpy(), ref, rtol=1e-13, atol=1e-13)


def test_stack_is_float32_only_when_exact():
    exact = torch.tensor([0.5, -1.25, 3.0], dtype=torch.float64)
    inexact = torch.tensor([0.1, 1.0 / 3.0], dtype=torch.float64)
    assert stack_entry(exact).dtype == torch.float32
    torch.testing.assert_close(stack_entry(exact).double(), exact, rtol=0, atol=0)
    assert stack_entry(inexact).dtype == torch.float64
    torch.testing.assert_close(stack_entry(inexact), inexact, rtol=0, atol=0)
    f32 = torch.tensor([0.1], dtype=torch.float32)
    assert stack_entry(f32).data_ptr() == f32.data_ptr()  # its own storage, not a copy
