"""Tasks on scikit-learn's bundled digits data (8 x 8 images, no download), for the trained zoo.

Every task shares one fixed, stratified train/test split of the 1797 images, so that a model's
test accuracy always means the same held-out images.  Tasks differ in which samples they keep,
how labels are mapped and how inputs are corrupted:

- ``all``: the ten digits as they are;
- ``perm-<p>``: the ten digits with labels permuted (digit d is labelled ``p[d]``);
- ``subset-<digits>``: only the listed digits (labels unchanged, so chance is ~1 / len(subset));
- ``ovr-<d>``: digit d against the rest, balanced by subsampling the rest (chance 0.5);
- ``noise-<sigma>``: the ten digits plus fixed Gaussian pixel noise (pixels scaled to [0, 1]);
- ``rot<angle>``: the ten digits rotated by ``angle`` degrees.

All models keep ten output logits whatever the task, so every model of a family has the same
tensor shapes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from explorer.core.errors import InputError

SPLIT_SEED = 0
TEST_SHARE = 0.25
TASK_SEED = 20251205
N_CLASSES = 10
N_FEATURES = 64


@dataclass(frozen=True)
class Task:
    """One learning problem on the digits.

    Attributes
    ----------
    name : str
        Unique, filename-safe (``perm-3017452968``, ``rot+20``...).
    group : str
        Task group: ``all``, ``permutation``, ``subset``, ``one-vs-rest``, ``noise`` or ``rotation``.
    params : tuple of int or float
        The permutation, the kept digits, the positive digit, the noise sigma or the angle.
    """

    name: str
    group: str
    params: tuple = ()


@dataclass(frozen=True)
class TaskData:
    """The samples of one task.

    Attributes
    ----------
    x_train, x_test : Tensor (n_train, 64), (n_test, 64), float32
        Pixels scaled to [0, 1] (noise may leave that range).
    y_train, y_test : Tensor (n_train,), (n_test,), int64
        Labels in 0..9.
    chance : float
        Test accuracy of always predicting the most frequent test label.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    chance: float


@lru_cache(maxsize=1)
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed stratified split: ``(x_train (1347, 64), y_train, x_test (450, 64), y_test)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SHARE, random_state=SPLIT_SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _build_tasks() -> tuple[Task, ...]:
    rng = np.random.default_rng(TASK_SEED)
    tasks = [Task("all", "all")]
    for _ in range(16):
        p = tuple(int(v) for v in rng.permutation(N_CLASSES))
        tasks.append(Task("perm-" + "".join(map(str, p)), "permutation", p))
    seen: set[tuple[int, ...]] = set()
    sizes = (3, 4, 5, 6)
    while len(seen) < 16:
        s = tuple(sorted(int(v) for v in rng.choice(N_CLASSES, sizes[len(seen) % 4], replace=False)))
        if s not in seen:
            seen.add(s)
            tasks.append(Task("subset-" + "".join(map(str, s)), "subset", s))
    tasks += [Task(f"ovr-{d}", "one-vs-rest", (d,)) for d in range(N_CLASSES)]
    tasks += [Task(f"noise-{s:.2f}", "noise", (s,)) for s in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6)]
    tasks += [Task(f"rot{a:+d}", "rotation", (a,)) for a in (-40, -30, -20, -10, 10, 20, 30, 40, 180)]
    return tuple(tasks)


#: The 60 tasks of the trained digits families, in a fixed order.
TASKS: tuple[Task, ...] = _build_tasks()
TASK_GROUPS: tuple[str, ...] = ("all", "permutation", "subset", "one-vs-rest", "noise", "rotation")


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`InputError` if there is none."""
    for t in TASKS:
        if t.name == name:
            return t
    raise InputError(f"digits task {name!r} does not exist (e.g. 'all', 'ovr-3', 'rot+20')")


def _rotate(x: np.ndarray, angle: float) -> np.ndarray:
    from scipy.ndimage import rotate

    img = x.reshape(-1, 8, 8)
    out = rotate(img, angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    return out.reshape(-1, N_FEATURES).astype(np.float32)


def _select(task: Task, x: np.ndarray, y: np.ndarray, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``task`` to one side of the split; ``salt`` keeps train and test noise independent."""
    # The per-task generator depends on the task's name only, so a task's data never depends
    # on which other tasks exist or in which order they are built.
    rng = np.random.default_rng([TASK_SEED, zlib.crc32(task.name.encode()), salt])
    if task.group == "all":
        return x, y
    if task.group == "permutation":
        return x, np.asarray(task.params, dtype=np.int64)[y]
    if task.group == "subset":
        keep = np.isin(y, task.params)
        return x[keep], y[keep]
    if task.group == "one-vs-rest":
        pos = np.flatnonzero(y == task.params[0])
        neg = rng.choice(np.flatnonzero(y != task.params[0]), size=len(pos), replace=False)
        idx = np.sort(np.concatenate([pos, neg]))
        return x[idx], (y[idx] == task.params[0]).astype(np.int64)
    if task.group == "noise":
        return (x + task.params[0] * rng.standard_normal(x.shape)).astype(np.float32), y
    if task.group == "rotation":
        return _rotate(x, task.params[0]), y
    raise InputError(f"digits task {task.name!r} has an unknown group {task.group!r}")


@lru_cache(maxsize=128)
def task_data(name: str) -> TaskData:
    """The train and test samples of task ``name`` (cached: tasks are pure functions of the name)."""
    task = get_task(name)
    x_tr, y_tr, x_te, y_te = split()
    a, b = _select(task, x_tr, y_tr, 0)
    c, d = _select(task, x_te, y_te, 1)
    chance = float(np.bincount(d, minlength=N_CLASSES).max() / len(d))
    return TaskData(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c), torch.from_numpy(d), chance)


@dataclass(frozen=True)
class StackedData:
    """The data of M tasks padded into stacks, for training M models at once.

    Attributes
    ----------
    x_train : Tensor (M, n_max, 64)
    y_train : Tensor (M, n_max), int64
    n_train : Tensor (M,), int64
        Real sample count of each task; rows past it are padding, never sampled.
    x_test : Tensor (M, t_max, 64)
    y_test : Tensor (M, t_max), int64
    test_mask : Tensor (M, t_max), bool
        True on real test samples.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    n_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_mask: torch.Tensor


def _pad(parts: list[torch.Tensor]) -> torch.Tensor:
    n = max(p.shape[0] for p in parts)
    out = torch.zeros((len(parts), n) + tuple(parts[0].shape[1:]), dtype=parts[0].dtype)
    for i, p in enumerate(parts):
        out[i, : p.shape[0]] = p
    return out


def stack_tasks(names: list[str], test_only: bool = False) -> StackedData:
    """Pad the data of tasks ``names`` (one per model, repeats allowed) into :class:`StackedData`.

    With ``test_only`` the training stacks are left empty (shape (M, 0, 64)): evaluation
    needs only the test side.
    """
    data = [task_data(n) for n in names]
    mask = _pad([torch.ones(len(d.y_test), dtype=torch.bool) for d in data])
    train = [d.x_train[:0] if test_only else d.x_train for d in data]
    return StackedData(
        x_train=_pad(train),
        y_train=_pad([d.y_train[:0] if test_only else d.y_train for d in data]),
        n_train=torch.tensor([len(t) for t in train], dtype=torch.int64),
        x_test=_pad([d.x_test for d in data]),
        y_test=_pad([d.y_test for d in data]),
        test_mask=mask,
    )
