"""Model mode: the kernel K_ij = <W_i, W_j>_F (N x N), built once, and its decomposition.

The raw (uncentered) kernel is built in one of three ways, all here:

* :func:`model_gram` — dense models.  K needs every pair of models, so a single pass over whole
  models would have to keep all of them.  Instead K is summed over row-blocks: rows r0:r1 of
  *every* model form an N x ((r1 - r0) n) block X_b and K = sum_b X_b X_b^T.  One block is held
  at a time, so memory is O(N^2 + N * block) whatever m*n is, and each product is one large,
  compute-bound matmul.  Row-blocks come from a *row reader* ``(r0, r1) -> iterable of Tensor
  (r1 - r0, n)``, one per model in order: :func:`family_row_reader` reads only those rows from
  safetensors files (``get_slice``); without one, a re-openable stream is sliced after reading
  whole models (one pass per block), and a one-shot iterator is stacked (small cases only).
* :func:`factored_model_gram` — LoRA updates W_i = s_i B_i A_i, from their factors in one pass:
  K_ij = s_i s_j tr((B_i^T B_j)(A_j A_i^T)).
* :func:`model_kernel` — either of them for a stream, chosen from the row reader or the first item.

:func:`decompose_kernel` centres (J K J) and decomposes a given kernel, so the pipeline builds K
once and hands the same raw K to the model-mode metrics, which then read no model again.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from explorer.core.backend import as_compute, pick_device, pick_dtype
from explorer.core.errors import InputError, OptionError
from explorer.core.linalg import double_center, eigh_desc
from explorer.core.lowrank import as_lowrank
from explorer.core.progress import ProgressFn
from explorer.core.tensors import check_finite, upcast
from explorer.engine.gram import sym_mirror_, sym_update_
from explorer.engine.options import SpectralOptions, Spectrum
from explorer.engine.plan import MODEL_BLOCK_BYTES

RowReader = Callable[[int, int], Iterable[torch.Tensor]]
# Bytes of one row-block (N x rows*n in the accumulation dtype): the plan's, so the memory guard
# estimates the same buffer.
BLOCK_BYTES = MODEL_BLOCK_BYTES
# A one-shot iterator can only be stacked; refuse beyond this rather than exhaust memory.
STACK_LIMIT_BYTES = 4 << 30
# Bytes of the per-block work matrices of the factored kernel.
FACTOR_BLOCK_BYTES = 192 << 20


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


def factored_model_gram(
    factors: Iterable[Any] | Callable[[], Iterator[Any]],
    n_models: int,
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
    progress: ProgressFn | None = None,
    *,
    block_bytes: int = FACTOR_BLOCK_BYTES,
) -> torch.Tensor:
    """K_ij = s_i s_j tr((B_i^T B_j)(A_j A_i^T)) of LoRA updates, shape (N, N), uncentered, one pass.

    All factors are held (O(sum_i r_i (m + n)), the adapters' own size, never N m n).  With
    B = [s_1 B_1 ... s_N B_N] (m x R) and A = [A_1; ...; A_N] (R x n), K is the block sums of
    (B^T B) * (A A^T), computed for blocks of models (upper triangle only: K is symmetric) so
    that the R_I x R work matrices stay within ``block_bytes``.

    Parameters
    ----------
    factors : iterable of LowRank or (B (m, r_i), A (r_i, n), scale), or callable() -> iterator of them
    n_models : int
    shape : (m, n)
    dtype, device : accumulation dtype and device
    progress : callable(done, total, label), optional
        Called once per adapter read.
    block_bytes : int
        Bytes of the per-block work matrices.
    """
    items = factors() if callable(factors) else factors
    bs: list[torch.Tensor] = []
    as_: list[torch.Tensor] = []
    seg: list[int] = []
    for i, item in enumerate(items):
        x = as_lowrank(item, i, shape, dtype, device)
        bs.append(x.scale * x.left)
        as_.append(x.right)
        seg.extend([i] * x.left.shape[1])
        if progress:
            progress(i + 1, n_models, "reading adapters")
    if len(bs) != n_models:
        raise InputError(f"expected {n_models} adapters, read {len(bs)}")
    bb = torch.cat(bs, dim=1)  # (m, R)
    aa = torch.cat(as_, dim=0)  # (R, n)
    del bs, as_
    seg_t = torch.tensor(seg, device=device, dtype=torch.long)
    starts = np.concatenate([[0], np.cumsum(np.bincount(np.asarray(seg, dtype=np.int64), minlength=n_models))])
    total = int(starts[-1])
    item_size = torch.empty((), dtype=dtype).element_size()
    per_row = max(1, block_bytes // (3 * max(total, 1) * item_size))
    gram = torch.zeros(n_models, n_models, dtype=dtype, device=device)
    i0 = 0
    while i0 < n_models:
        i1 = i0 + 1
        while i1 < n_models and starts[i1 + 1] - starts[i0] <= per_row:
            i1 += 1
        c0, c1 = int(starts[i0]), int(starts[i1])
        # Only columns of models >= i0 are needed: K is symmetric.
        pb = bb[:, c0:c1].T @ bb[:, c0:]  # (R_I, R - c0)
        pb.mul_(aa[c0:c1] @ aa[c0:].T)
        rows = torch.zeros(i1 - i0, total - c0, dtype=dtype, device=device)
        rows.index_add_(0, seg_t[c0:c1] - i0, pb)
        block = torch.zeros(i1 - i0, n_models - i0, dtype=dtype, device=device)
        block.index_add_(1, seg_t[c0:] - i0, rows)
        gram[i0:i1, i0:] = block
        gram[i0:, i0:i1] = block.T
        i0 = i1
    return gram


def _first_pass_again(opener: Callable[[], Iterator[Any]], first: Iterator[Any]) -> Callable[[], Iterator[Any]]:
    """An opener whose first call returns the pass already started (``first``), later calls fresh ones."""
    pending = [first]

    def again() -> Iterator[Any]:
        return pending.pop() if pending else opener()

    return again


def model_kernel(
    source: Iterable[Any] | Callable[[], Iterator[Any]],
    n_models: int,
    shape: tuple[int, int],
    options: SpectralOptions = SpectralOptions(mode="model"),
    progress: ProgressFn | None = None,
    *,
    row_reader: RowReader | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> torch.Tensor:
    """The raw model kernel K_ij = <W_i, W_j>_F of a stream, shape (N, N), uncentered.

    Dense matrices go to :func:`model_gram` (by ``row_reader`` when one is given, without
    opening the stream), LoRA factors (LowRank items or (B, A, scale) triples, told apart by the
    first item) to :func:`factored_model_gram`.  The pass that reads the first item is the one
    used, so a small family is read exactly once.

    Parameters
    ----------
    source : iterable of Tensor (m, n), LowRank or (B, A, scale), or callable() -> iterator of them
    n_models : int
    shape : (m, n)
    options : SpectralOptions
        Only ``dtype`` and ``device`` are used.
    progress : callable(done, total, label), optional
    row_reader : callable(r0, r1) -> iterable of Tensor (r1 - r0, n), optional
        Dense models only: see :func:`model_gram`.
    block_bytes : int
        Row-block buffer of the dense path.

    Returns
    -------
    Tensor, shape (N, N), in the accumulation dtype and device
    """
    if n_models < 1:
        raise InputError("the layer group has no models to decompose")
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    shape = (int(shape[0]), int(shape[1]))
    if row_reader is not None:
        return model_gram(source, n_models, shape, dtype, device, progress, row_reader=row_reader,
                          block_bytes=block_bytes)
    items = iter(source() if callable(source) else source)
    first = next(items, None)
    if first is None:
        raise InputError(f"expected {n_models} models, read 0")
    items = itertools.chain([first], items)
    if isinstance(first, torch.Tensor):
        matrices = _first_pass_again(source, items) if callable(source) else items
        return model_gram(matrices, n_models, shape, dtype, device, progress, block_bytes=block_bytes)
    return factored_model_gram(items, n_models, shape, dtype, device, progress)


def decompose_kernel(
    kernel: torch.Tensor,
    n_models: int,
    shape: tuple[int, int],
    options: SpectralOptions,
    *,
    method: str = "exact",
) -> Spectrum:
    """The model-mode spectrum of a raw kernel: J K J when centred (both centerings), then eigh.

    Parameters
    ----------
    kernel : Tensor, shape (N, N)
        Raw K_ij = <W_i, W_j>_F (:func:`model_kernel`); not modified.
    n_models : int
    shape : (m, n)
        Shape of each model, recorded in the Spectrum.
    options : SpectralOptions
        ``center`` and ``k_store`` are used.
    method : str
        Recorded in the Spectrum (``exact`` for dense models, ``factored`` for LoRA factors).

    Returns
    -------
    Spectrum
        ``mode == "model"``; eigenvalues (N,), basis (N, min(k_store, N)).
    """
    if tuple(kernel.shape) != (n_models, n_models):
        raise InputError(f"model kernel has shape {tuple(kernel.shape)}, expected {(n_models, n_models)}")
    # Both centerings subtract the mean model here: K_c = J K J, J = I - 11^T/N.
    gram = double_center(kernel) if options.center != "none" else kernel
    vals, vecs = eigh_desc(gram, options.k_store)
    return Spectrum(vals, vecs, "model", options.center, n_models, tuple(shape), method=method)


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
        t = upcast(t) if t.is_floating_point() else t.to(torch.float32)
        # A MemberError, as Family.tensor raises: the pipeline skips this model and names it.
        check_finite(t, model.name, tensor, path)
        return t

    def reader(r0: int, r1: int) -> Iterator[torch.Tensor]:
        b = rows_of(base, r0, r1) if base is not None else None
        for model in family.models:
            t = rows_of(model, r0, r1)
            yield t - b if b is not None else t

    return reader
