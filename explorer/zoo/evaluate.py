"""Evaluators: the test accuracy of a zoo family's models, with some weights replaced.

This is what the paper's central experiment needs: project each model's layer onto the top-k
shared components, put the projection back into the model, and measure its accuracy.

Each digits family (and ``minilm-lora``, see :mod:`explorer.zoo.minilm_eval`) has one
:class:`Evaluator`.  Replacements are keyed by canonical tensor names
(as :mod:`explorer.sources.naming` spells them):

- dense families: ``layers.{i}.weight`` (out x in) or ``layers.{i}.bias``;
- ``digits-lora``: ``layers.{i}.lora_A.weight`` (r x in) and ``layers.{i}.lora_B.weight``
  (out x r) replace a factor; ``layers.{i}.weight`` replaces the *effective* weight the layer
  uses (out x in), i.e. base + s B A, so a projected update ΔW goes in as ``W0 + proj(ΔW)``.

Use :func:`evaluator_for` to get a family's evaluator from its zoo name, and
:mod:`explorer.zoo.projection` for accuracy against k.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from explorer.core.errors import InputError
from explorer.core.threads import single_threaded
from explorer.zoo import digits_data as dd
from explorer.zoo import train as tr
from explorer.zoo.peft_layout import factors_of, read_adapter

Replacements = Mapping[str, Mapping[str, torch.Tensor]]
DENSE_FAMILIES = ("digits-mlp-scratch", "digits-mlp-finetune", "digits-random-init")
LORA_FAMILIES = ("digits-lora",)


class Evaluator(ABC):
    """Test accuracy of the models of one zoo family, each on its own task.

    Parameters
    ----------
    folder : Path
        The built family folder (``metadata.csv``, ``models/``, maybe ``base/``).
    family : str
        Its zoo name (``digits-mlp-scratch``...).

    Attributes
    ----------
    metadata : DataFrame
        ``metadata.csv``: one row per model with ``name``, ``task`` and ``test_accuracy``.
    models : list of str
    layers : tuple of str
        The module paths whose weights can be replaced or projected.
    views : tuple of str
        The views :func:`explorer.zoo.projection.projected_accuracy` accepts for this family.
    """

    layers: tuple[str, ...] = tr.LAYERS
    views: tuple[str, ...] = ("full",)

    def __init__(self, folder: Path, family: str):
        self.folder = Path(folder)
        self.family = family
        path = self.folder / "metadata.csv"
        try:
            self.metadata = pd.read_csv(path, dtype={"name": str, "task": str})
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot be read ({exc})") from None
        self.models: list[str] = list(self.metadata["name"])
        self._task = dict(zip(self.metadata["name"], self.metadata["task"]))
        self._base: dict[str, torch.Tensor] | None = None
        # Stored tensors per model, read once: sweeps over k re-evaluate every model many times.
        self._stored: dict[str, dict[str, torch.Tensor]] = {}

    # --- what the subclasses provide -------------------------------------------------------
    @abstractmethod
    def weights(self, model: str) -> dict[str, torch.Tensor]:
        """Model ``model``'s analysable tensors by canonical name (see the module docstring)."""

    @abstractmethod
    def _effective(self, model: str, replace: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``layers.{i}.weight`` / ``.bias`` the model computes with, after ``replace``."""

    # --- shared ------------------------------------------------------------------------------
    @property
    def base(self) -> dict[str, torch.Tensor]:
        """The shared base model's tensors (``base/model.safetensors``); InputError if none."""
        if self._base is None:
            path = self.folder / "base" / "model.safetensors"
            if not path.is_file():
                raise InputError(f"{path}: {self.family} has no base model")
            self._base = load_file(str(path))
        return self._base

    def _check(self, model: str) -> None:
        if model not in self._task:
            raise InputError(f"zoo:{self.family} has no model {model!r}")

    def stored_accuracy(self, model: str) -> float:
        """The test accuracy recorded in ``metadata.csv`` when the family was built."""
        self._check(model)
        return float(self.metadata.loc[self.metadata["name"] == model, "test_accuracy"].iloc[0])

    def accuracies(self, replacements: Replacements | None = None, models: Sequence[str] | None = None) -> dict[str, float]:
        """Test accuracy of several models at once (one batched forward pass).

        Parameters
        ----------
        replacements : dict model name -> (dict tensor name -> Tensor), optional
            Tensors that replace the stored ones, per model.
        models : list of str, optional
            Which models (default: those in ``replacements``, else all).

        Returns
        -------
        dict model name -> accuracy in [0, 1]
        """
        replacements = replacements or {}
        names = list(models) if models is not None else (list(replacements) or self.models)
        for n in names:
            self._check(n)
        if not names:
            return {}
        with single_threaded():
            return self._evaluate(names, replacements)

    def _evaluate(self, names: list[str], replacements: Replacements) -> dict[str, float]:
        """The digits MLPs: every model stacked, one batched forward pass on the padded test sets."""
        data = dd.stack_tasks([self._task[n] for n in names], test_only=True)
        states = [self._effective(n, replacements.get(n, {})) for n in names]
        stack = tr.MLPStack.from_state_dicts(states)
        return dict(zip(names, tr.accuracy(stack.weights, stack.biases, data)))

    def accuracy(self, model: str, weights: Mapping[str, torch.Tensor] | None = None) -> float:
        """Test accuracy of one model on its task, with ``weights`` replacing stored tensors."""
        return self.accuracies({model: dict(weights or {})}, [model])[model]

    #: Whether :meth:`state_accuracies` evaluates any weights on any task (the digits MLPs share
    #: one architecture and label space; MiniLM's heads are per task).
    cross_task = True

    def task_of(self, model: str) -> str:
        """The task ``model`` was trained on."""
        self._check(model)
        return self._task[model]

    def model_state(self, model: str) -> dict[str, torch.Tensor]:
        """The effective ``layers.{i}.weight`` / ``.bias`` tensors ``model`` computes with."""
        return self._effective(model, {})

    def base_state(self) -> dict[str, torch.Tensor] | None:
        """The base model's tensors, or None for a family without one (trained from scratch)."""
        return dict(self.base) if (self.folder / "base" / "model.safetensors").is_file() else None

    def state_accuracies(self, states: Sequence[Mapping[str, torch.Tensor]], tasks: Sequence[str]) -> np.ndarray:
        """Test accuracy of each effective state on each task, shape (len(states), len(tasks)).

        ``states``: full ``layers.{i}.weight`` / ``.bias`` dicts (e.g. a merged model's); one batched
        forward pass over every (state, task) pair.
        """
        if not states or not tasks:
            return np.zeros((len(states), len(tasks)))
        pairs = [(s, t) for s in states for t in tasks]
        with single_threaded():
            data = dd.stack_tasks([t for _, t in pairs], test_only=True)
            stack = tr.MLPStack.from_state_dicts([{k: v.float() for k, v in s.items()} for s, _ in pairs])
            acc = tr.accuracy(stack.weights, stack.biases, data)
        return np.asarray(acc, dtype=np.float64).reshape(len(states), len(tasks))


def _checked(name: str, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(new).to(torch.float32)
    if tuple(t.shape) != tuple(old.shape):
        raise InputError(f"replacement for {name!r} has shape {tuple(t.shape)}, expected {tuple(old.shape)}")
    return t


class DenseEvaluator(Evaluator):
    """Evaluator of a family of full MLP checkpoints (``models/<name>.safetensors``)."""

    def __init__(self, folder: Path, family: str):
        super().__init__(folder, family)
        # The delta view needs the shared base the models were fine-tuned from.
        self.views = ("full", "delta") if (self.folder / "base" / "model.safetensors").is_file() else ("full",)

    def weights(self, model: str) -> dict[str, torch.Tensor]:
        self._check(model)
        if model not in self._stored:
            path = self.folder / "models" / f"{model}.safetensors"
            try:
                self._stored[model] = load_file(str(path))
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: cannot be read ({exc})") from None
        return dict(self._stored[model])

    def _effective(self, model: str, replace: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = self.weights(model)
        for name, t in replace.items():
            if name not in state:
                raise InputError(f"model {model!r} has no tensor {name!r} (it has {', '.join(sorted(state))})")
            state[name] = _checked(name, t, state[name])
        return state


class LoraEvaluator(Evaluator):
    """Evaluator of PEFT adapters (``models/<name>/``) on the frozen ``base/model.safetensors``."""

    views = ("dW", "A", "B")

    def __init__(self, folder: Path, family: str):
        super().__init__(folder, family)
        self._lora: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = {}

    def _factors(self, model: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        """``{layer: (A (r, in), B (out, r), s)}`` of one adapter (read once, then cached)."""
        self._check(model)
        if model not in self._lora:
            cfg, tensors = read_adapter(self.folder / "models" / model)
            self._lora[model] = {layer: factors_of(cfg, tensors, layer) for layer in self.layers}
        return self._lora[model]

    def weights(self, model: str) -> dict[str, torch.Tensor]:
        """Factors ``layers.{i}.lora_A.weight``, ``lora_B.weight`` and the update ``layers.{i}.delta``.

        ``layers.{i}.delta`` is ΔW = s B A (out x in), given for convenience; replace the
        effective weight ``layers.{i}.weight`` = base + ΔW to change it.
        """
        out: dict[str, torch.Tensor] = {}
        for layer, (a, b, s) in self._factors(model).items():
            out[f"{layer}.lora_A.weight"] = a
            out[f"{layer}.lora_B.weight"] = b
            out[f"{layer}.delta"] = s * (b @ a)
        return out

    def _effective(self, model: str, replace: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        factors = self._factors(model)
        state = {k: v.float() for k, v in self.base.items()}
        known = {f"{layer}.{p}" for layer in self.layers for p in ("lora_A.weight", "lora_B.weight", "weight", "bias")}
        for name in replace:
            if name not in known:
                raise InputError(f"adapter {model!r} has no tensor {name!r} (use {', '.join(sorted(known))})")
        def pick(name: str, stored: torch.Tensor) -> torch.Tensor:
            return _checked(name, replace[name], stored) if name in replace else stored

        for layer, (a, b, s) in factors.items():
            a = pick(f"{layer}.lora_A.weight", a)
            b = pick(f"{layer}.lora_B.weight", b)
            state[f"{layer}.weight"] = pick(f"{layer}.weight", state[f"{layer}.weight"] + s * (b @ a))
            state[f"{layer}.bias"] = pick(f"{layer}.bias", state[f"{layer}.bias"])
        return state
