"""Batched training of many small MLPs at once: one ``bmm`` over stacked weights per layer.

M models of one architecture are held as stacks, ``W_l`` of shape (M, out, in) and ``b_l`` of
shape (M, out).  The loss is the *sum* over models of each model's mean cross-entropy, so each
model's gradient depends on its own weights and data only, and Adam (elementwise) keeps the
models independent: training M models together gives each the result it would get alone (up
to float rounding of the batched kernels).  Each model draws its minibatches from its own
generator seeded by its own seed, so a model's training is a function of (seed, task, init).

LoRA adapters train the same way: the effective weight of model i is ``W0 + s_i B_i A_i``,
formed by one bmm per layer; only the factors receive gradients.  Adapters of rank r < r_max
are zero-padded: a zero row of A paired with a zero column of B gets zero gradient, so the
padding stays exactly zero and never changes the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from explorer.core.progress import ProgressFn
from explorer.core.threads import single_threaded
from explorer.zoo.digits_data import StackedData

#: Layer widths of every digits MLP: 64 pixels -> 128 -> 128 -> 10 logits.
SIZES: tuple[int, ...] = (64, 128, 128, 10)
#: Module names, as in :class:`DigitsMLP` (``layers.0.weight``...).
LAYERS: tuple[str, ...] = tuple(f"layers.{i}" for i in range(len(SIZES) - 1))


class DigitsMLP(torch.nn.Module):
    """The digits MLP as an ordinary torch module (for PEFT, and to check the batched code).

    Input (B, 64) pixels in [0, 1]; output (B, 10) logits; ReLU between the linear layers.
    """

    def __init__(self, sizes: Sequence[int] = SIZES):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


@dataclass
class MLPStack:
    """M MLPs as stacked tensors.

    Attributes
    ----------
    weights : list of Tensor (M, out_l, in_l)
    biases : list of Tensor (M, out_l)
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    def __len__(self) -> int:
        return self.weights[0].shape[0]

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model i's tensors under :class:`DigitsMLP`'s names (contiguous copies, for saving)."""
        out: dict[str, torch.Tensor] = {}
        for name, w, b in zip(LAYERS, self.weights, self.biases):
            out[f"{name}.weight"] = w[i].detach().clone().contiguous()
            out[f"{name}.bias"] = b[i].detach().clone().contiguous()
        return out

    @staticmethod
    def from_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> "MLPStack":
        """Stack M state dicts holding :data:`LAYERS` weights and biases."""
        return MLPStack(
            [torch.stack([s[f"{n}.weight"].float() for s in states]) for n in LAYERS],
            [torch.stack([s[f"{n}.bias"].float() for s in states]) for n in LAYERS],
        )


def init_stack(seeds: Sequence[int], sizes: Sequence[int] = SIZES) -> MLPStack:
    """PyTorch's default ``nn.Linear`` init, model i drawn from a generator seeded ``seeds[i]``.

    Weights and biases are U(-1/sqrt(in), 1/sqrt(in)), which is what kaiming-uniform with
    a = sqrt(5) (torch's default) amounts to.
    """
    ws: list[list[torch.Tensor]] = [[] for _ in sizes[1:]]
    bs: list[list[torch.Tensor]] = [[] for _ in sizes[1:]]
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            bound = n_in**-0.5
            ws[l].append((torch.rand(n_out, n_in, generator=g) * 2 - 1) * bound)
            bs[l].append((torch.rand(n_out, generator=g) * 2 - 1) * bound)
    return MLPStack([torch.stack(w) for w in ws], [torch.stack(b) for b in bs])


def forward(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of M models on their own inputs.

    Parameters
    ----------
    weights : list of Tensor (M, out_l, in_l)
    biases : list of Tensor (M, out_l)
    x : Tensor (M, B, in_0)

    Returns
    -------
    Tensor (M, B, out_last)
    """
    h = x
    for l, (w, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if l < len(weights) - 1:
            h = torch.relu(h)
    return h


def forward_lora(base: MLPStack, lora: "LoraStack", x: torch.Tensor) -> torch.Tensor:
    """Logits of M adapters on one frozen base, without forming the merged weights.

    Each layer computes ``h W0^T + b0 + s_i (h A_i^T) B_i^T``: the shared base as one large
    matmul, the update through the rank-r bottleneck (cheaper than ``W0 + s B A`` per model).

    Parameters
    ----------
    base : MLPStack of one model
    lora : LoraStack of M adapters
    x : Tensor (M, B, in_0)

    Returns
    -------
    Tensor (M, B, out_last)
    """
    h = x
    s = lora.scale.view(-1, 1, 1)
    n = len(base.weights)
    for l, (w0, b0, a, b) in enumerate(zip(base.weights, base.biases, lora.a, lora.b)):
        low = torch.bmm(torch.bmm(h, a.transpose(1, 2)), b.transpose(1, 2))
        h = torch.matmul(h, w0[0].t()) + b0[0] + s * low
        if l < n - 1:
            h = torch.relu(h)
    return h


@torch.no_grad()
def accuracy(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], data: StackedData) -> list[float]:
    """Test accuracy of each of M models on its own task: correct / real test samples."""
    pred = forward(weights, biases, data.x_test).argmax(-1)
    correct = ((pred == data.y_test) & data.test_mask).sum(1)
    return [int(c) / int(n) for c, n in zip(correct, data.test_mask.sum(1))]


def _batches(seeds: Sequence[int], n_train: torch.Tensor, steps: int, batch: int) -> torch.Tensor:
    """Minibatch indices (M, steps, batch), model i's from its own generator."""
    rows = []
    for seed, n in zip(seeds, n_train.tolist()):
        g = torch.Generator().manual_seed(int(seed) + 7919)  # offset: not the init stream
        rows.append(torch.randint(0, n, (steps, batch), generator=g))
    return torch.stack(rows)


def fit_params(
    params: list[torch.Tensor],
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    data: StackedData,
    seeds: Sequence[int],
    steps: int,
    lr: float,
    batch: int,
    progress: ProgressFn | None,
    label: str,
) -> None:
    """Adam on ``params``, minimising the summed per-model loss of ``logits_of`` on minibatches."""
    idx = _batches(seeds, data.n_train, steps, batch)
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    every = max(1, steps // 20)
    n_feat = data.x_train.shape[-1]
    with single_threaded():
        for step in range(steps):
            i = idx[:, step]
            xb = torch.gather(data.x_train, 1, i.unsqueeze(-1).expand(-1, -1, n_feat))
            yb = torch.gather(data.y_train, 1, i)
            logits = logits_of(xb)
            # Sum over models of each model's mean loss: the models' gradients stay independent.
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="sum") / batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress and ((step + 1) % every == 0 or step + 1 == steps):
                progress(step + 1, steps, label)


def train_dense(
    stack: MLPStack,
    data: StackedData,
    seeds: Sequence[int],
    steps: int,
    lr: float,
    batch: int = 64,
    progress: ProgressFn | None = None,
    label: str = "training",
) -> MLPStack:
    """Train every weight and bias of M models with Adam; returns a new stack (the input is kept)."""
    ws = [w.detach().clone().requires_grad_(True) for w in stack.weights]
    bs = [b.detach().clone().requires_grad_(True) for b in stack.biases]
    fit_params(ws + bs, lambda x: forward(ws, bs, x), data, seeds, steps, lr, batch, progress, label)
    return MLPStack([w.detach() for w in ws], [b.detach() for b in bs])


@dataclass
class LoraStack:
    """M LoRA adapters on every layer of one frozen base MLP.

    Attributes
    ----------
    a : list of Tensor (M, r_max, in_l)
        ``lora_A`` of each layer; rows past an adapter's rank are zero.
    b : list of Tensor (M, out_l, r_max)
        ``lora_B`` of each layer; columns past an adapter's rank are zero.
    scale : Tensor (M,)
        s_i = lora_alpha / r_i.
    ranks : list of int
    """

    a: list[torch.Tensor]
    b: list[torch.Tensor]
    scale: torch.Tensor
    ranks: list[int]

    def merged(self, base: MLPStack) -> list[torch.Tensor]:
        """Effective weights W0 + s_i B_i A_i of every layer: list of Tensor (M, out_l, in_l)."""
        s = self.scale.view(-1, 1, 1)
        return [w0[0] + s * torch.bmm(b, a) for w0, a, b in zip(base.weights, self.a, self.b)]

    def factors(self, i: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Adapter i's unpadded ``(A (r, in), B (out, r))`` per layer name."""
        r = self.ranks[i]
        return {
            n: (a[i, :r].detach().clone().contiguous(), b[i, :, :r].detach().clone().contiguous())
            for n, a, b in zip(LAYERS, self.a, self.b)
        }


def init_lora(
    a_seeds: Sequence[int], ranks: Sequence[int], alpha: float, sizes: Sequence[int] = SIZES
) -> LoraStack:
    """PEFT's default LoRA init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.

    Adapter i's A comes from generators seeded by ``a_seeds[i]`` (one per layer) and is cut to
    its rank, so adapters that share an A seed share their A init (the first r rows of it).
    """
    r_max = max(ranks)
    a_layers: list[list[torch.Tensor]] = [[] for _ in sizes[1:]]
    for seed, r in zip(a_seeds, ranks):
        for l, n_in in enumerate(sizes[:-1]):
            # One generator per (seed, layer): row j of A is the same whatever r and r_max are.
            g = torch.Generator().manual_seed(int(seed) * 16 + l)
            a = (torch.rand(r_max, n_in, generator=g) * 2 - 1) * n_in**-0.5
            a[r:] = 0
            a_layers[l].append(a)
    m = len(ranks)
    return LoraStack(
        a=[torch.stack(a) for a in a_layers],
        b=[torch.zeros(m, n_out, r_max) for n_out in sizes[1:]],
        scale=torch.tensor([alpha / r for r in ranks], dtype=torch.float32),
        ranks=list(ranks),
    )


def train_lora(
    base: MLPStack,
    lora: LoraStack,
    data: StackedData,
    seeds: Sequence[int],
    steps: int,
    lr: float,
    batch: int = 64,
    progress: ProgressFn | None = None,
    label: str = "training LoRA",
) -> LoraStack:
    """Train the factors of M adapters on a frozen base (a stack of one model)."""
    a = [t.detach().clone().requires_grad_(True) for t in lora.a]
    b = [t.detach().clone().requires_grad_(True) for t in lora.b]
    out = LoraStack(a, b, lora.scale, lora.ranks)
    fit_params(a + b, lambda x: forward_lora(base, out, x), data, seeds, steps, lr, batch, progress, label)
    return LoraStack([t.detach() for t in a], [t.detach() for t in b], lora.scale, lora.ranks)
