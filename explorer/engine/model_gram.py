"""Model-mode Gram K_ij = <W_i, W_j>_F (N x N) without holding the N x mn stack when it is large.

K needs every pair of models, so a single pass over whole models would have to keep all of
them.  Instead K is summed over row-blocks: rows r0:r1 of *every* model form an
N x ((r1 - r0) n) block X_b and K = sum_b X_b X_b^T.  One block is held at a time, so memory is
O(N^2 + N * block) whatever m*n is, and each product is one large, compute-bound matmul.

Row-blocks come from a *row reader* ``(r0, r1) -> iterable of Tensor (r1 - r0, n)``, one per
model in order.  :func:`family_row_reader` builds one that reads only those rows from
safetensors files (``get_slice``); without one, a re-openable stream is sliced after reading
whole models (one pass per block), and a one-shot iterator is stacked (small cases only).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch

from explorer.core.backend import as_compute
from explorer.core.errors import InputError, OptionError
from explorer.engine.gram import sym_mirror_, sym_update_
from explorer.engine.plan import MODEL_BLOCK_BYTES

RowReader = Callable[[int, int], Iterable[torch.Tensor]]
# Bytes of one row-block (N x rows*n in the accumulation dtype): the plan's, so the memory guard
# estimates the same buffer.
BLOCK_BYTES = MODEL_BLOCK_BYTES
# A one-shot iterator can only be stacked; refuse beyond this rather than exhaust memory.
STACK_LIMIT_BYTES = 4 << 30


def model_gram(
    matrices: Iterable[torch.Tensor] | Callable[[], Iterator[torch.Tensor]],
    n_models: int,
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    row_reader: RowReader | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> torch.Tensor:
    """K_ij = <W_i, W_j>_F, shape (N, N), uncentered.

    Parameters
    ----------
    matrices : iterable of Tensor (m, n), or callable() -> iterator of them
    n_models : int
    shape : (m, n)
    dtype, device : accumulation dtype and device
    progress : callable(done, total, label), optional
    row_reader : callable(r0, r1) -> iterable of Tensor (r1 - r0, n), optional
        Preferred when N * m * n exceeds ``block_bytes``.
    block_bytes : int
        Size of one row-block buffer.
    """
    m, n = shape
    item = torch.empty((), dtype=dtype).element_size()
    total_bytes = n_models * m * n * item
    if total_bytes <= block_bytes and row_reader is None:
        return _stacked(matrices() if callable(matrices) else matrices, n_models, shape, dtype, device, progress)
    if row_reader is None and callable(matrices):
        opener = matrices

        def row_reader(r0: int, r1: int) -> Iterator[torch.Tensor]:
            # Reads whole models and keeps the rows: one full pass per block, but bounded memory.
            for w in opener():
                if tuple(w.shape) != shape:
                    raise InputError(f"matrix of shape {tuple(w.shape)} does not match the group's {shape}")
                yield w[r0:r1]

    if row_reader is None:
        if total_bytes > STACK_LIMIT_BYTES:
            raise OptionError(
                f"model mode of {n_models} models of {m}x{n} would hold {total_bytes / 2**30:.1f} GiB; "
                "pass a re-openable stream or a row reader so that it can be streamed by row-blocks"
            )
        return _stacked(matrices, n_models, shape, dtype, device, progress)
    return _row_blocks(row_reader, n_models, shape, dtype, device, progress, block_bytes)


def _stacked(matrices, n_models, shape, dtype, device, progress) -> torch.Tensor:
    m, n = shape
    x = torch.empty(n_models, m * n, dtype=dtype, device=device)
    count = 0
    for i, w in enumerate(matrices):
        if tuple(w.shape) != tuple(shape):
            raise InputError(f"matrix of shape {tuple(w.shape)} does not match the group's {tuple(shape)}")
        if i >= n_models:
            raise InputError(f"expected {n_models} models, read more")
        x[i].copy_(as_compute(w, dtype, device).reshape(-1))
        count += 1
        if progress:
            progress(i + 1, n_models, "reading models")
    if count != n_models:
        raise InputError(f"expected {n_models} models, read {count}")
    return x @ x.T


def _row_blocks(row_reader, n_models, shape, dtype, device, progress, block_bytes) -> torch.Tensor:
    m, n = shape
    item = torch.empty((), dtype=dtype).element_size()
    rows = int(max(1, min(m, block_bytes // max(1, n_models * n * item))))
    n_blocks = -(-m // rows)
    gram = torch.zeros(n_models, n_models, dtype=dtype, device=device)
    buf = torch.empty(n_models, rows * n, dtype=dtype, device=device)
    for b in range(n_blocks):
        r0, r1 = b * rows, min(m, (b + 1) * rows)
        width = (r1 - r0) * n
        count = 0
        for i, piece in enumerate(row_reader(r0, r1)):
            if tuple(piece.shape) != (r1 - r0, n):
                raise InputError(f"model {i}: rows {r0}:{r1} have shape {tuple(piece.shape)}, expected {(r1 - r0, n)}")
            if i >= n_models:
                raise InputError(f"expected {n_models} models, read more")
            buf[i, :width].copy_(as_compute(piece, dtype, device).reshape(-1))
            count += 1
        if count != n_models:
            raise InputError(f"expected {n_models} models, read {count}")
        sym_update_(gram, buf[:, :width])
        if progress:
            progress(b + 1, n_blocks, "reading row-blocks of every model")
    return sym_mirror_(gram)


def family_row_reader(family, tensor: str, base=None) -> RowReader:
    """A row reader over one tensor of every model of a family (reads only those rows).

    Parameters
    ----------
    family : explorer.sources.family.Family
    tensor : str
        Stored tensor name; the tensor must be 2-D (m, n).
    base : explorer.sources.family.ModelRef, optional
        Subtract this model's rows (the ``delta`` view).

    Returns
    -------
    callable(r0, r1) -> iterator of Tensor (r1 - r0, n), float32 or wider
    """
    from safetensors import safe_open

    def rows_of(model, r0: int, r1: int) -> torch.Tensor:
        # family.locate maps canonical names (PEFT prefixes stripped) to the stored name and file;
        # the base model is not indexed with the members, so it is read whole (once per block).
        try:
            path, stored = family.locate(model, tensor)
        except (KeyError, InputError):
            path, stored = None, None
        if path is not None and path.lower().endswith(".safetensors"):
            with safe_open(path, framework="pt") as f:
                t = f.get_slice(stored)[r0:r1]
        else:
            t = family.tensor(model, tensor)[r0:r1]
        if t.dim() != 2:
            t = t.reshape(r1 - r0, -1)  # conv kernels: the group's n is the flattened rest
        if t.dtype in (torch.float16, torch.bfloat16) or not t.is_floating_point():
            t = t.to(torch.float32)
        if not torch.isfinite(t).all():
            raise InputError(f"model {model.name!r}: tensor {tensor!r} in {path} holds NaN or Inf")
        return t

    def reader(r0: int, r1: int) -> Iterator[torch.Tensor]:
        b = rows_of(base, r0, r1) if base is not None else None
        for model in family.models:
            t = rows_of(model, r0, r1)
            yield t - b if b is not None else t

    return reader
