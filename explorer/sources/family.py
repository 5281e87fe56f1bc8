"""Model families: N models of one architecture plus a metadata table.

A :class:`Family` never holds tensor data.  It knows, for each model, which files hold which
tensors (from headers only), and reads one tensor at a time on request, so that the engine
can stream a family of any size.  Tensor names are canonical (see
:mod:`explorer.sources.naming`): a PEFT adapter's
``base_model.model.layers.3.q_proj.lora_A.weight`` is ``layers.3.q_proj.lora_A.weight`` here, so
adapters and their base model share module names.

Members that cannot be used are never dropped silently: each one becomes a :class:`Skipped`
entry (name, path, reason) in ``Family.skipped``, which every output lists; ``strict`` callers
refuse the family instead (:func:`check_strict`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import torch

from explorer.core.errors import InputError
from explorer.core.tensors import check_finite, upcast
from explorer.sources import readers
from explorer.sources.naming import LORA_ALPHA, canonical_name
from explorer.sources.peft import LoraConfig


class Skipped(str):
    """One member of a family that could not be used: its ``name``, ``path`` and ``reason``.

    It is also the one readable line that names it (:meth:`line`: ``name: reason``, then
    ``[path]`` unless the reason names it, e.g. ``m3: /data/m3.safetensors: header is not valid
    JSON``): a ``str`` subclass, so code that lists skipped members as lines (the app's sidebar,
    older callers) keeps working while new code reads the fields.

    Parameters
    ----------
    name : str
        The member's name (file stem, folder name or repo id).
    path : str
        Where it is: the file or folder, or ``hf:org/repo`` for a Hub repo.
    reason : str
        The one-line error that made it unusable (it usually names the file or tensor itself).
    """

    name: str
    path: str
    reason: str

    def __new__(cls, name: str, path: str, reason: str) -> Skipped:
        reason = " ".join(str(reason).split())  # one line, whatever the underlying error said
        # The path is repeated only when the reason does not already name it.
        text = f"{name}: {reason}" if not path or path in reason else f"{name}: {reason} [{path}]"
        self = super().__new__(cls, text)
        self.name, self.path, self.reason = str(name), str(path), reason
        return self

    def __getnewargs__(self) -> tuple[str, str, str]:  # pickle / copy rebuild it from its fields
        return (self.name, self.path, self.reason)

    def line(self) -> str:
        """The member and why it was skipped, on one line (the string value itself)."""
        return str.__str__(self)

    def to_json(self) -> dict[str, str]:
        """``{"name", "path", "reason"}``: the entry of the JSON outputs' ``skipped`` list."""
        return {"name": self.name, "path": self.path, "reason": self.reason}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Skipped:
        """Inverse of :meth:`to_json`."""
        return cls(str(d.get("name", "")), str(d.get("path", "")), str(d.get("reason", "")))


def check_strict(source: str, skipped: Sequence[Skipped]) -> None:
    """Refuse a family that has skipped members (``strict``): one line naming the first.

    Raises
    ------
    InputError
        If ``skipped`` is not empty.
    """
    if skipped:
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more bad members)" if len(skipped) > 1 else ""
        raise InputError(f"{source}: refused (strict): member {first.line()}{more}")


def _as_skipped(entry: Skipped | str) -> Skipped:
    """A plain ``"name: reason"`` line (as older callers build them) as an entry of unknown path."""
    if isinstance(entry, Skipped):
        return entry
    name, _, reason = str(entry).partition(": ")
    return Skipped(name, "", reason or name)


@dataclass(frozen=True)
class TensorInfo:
    """Header facts about one tensor: its (canonical) name, shape and dtype string (``"F32"``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ModelRef:
    """One model of a family: a name, the files that hold it, and its labels.

    Parameters
    ----------
    name : str
        Unique name of the model within its family.
    files : tuple of str
        Paths of the weight files (several for a sharded checkpoint).
    labels : tuple of (str, str)
        Metadata pairs (task, group, seed...), kept as a tuple so the object is hashable.
    source : str
        Where it came from (a path, or ``hf:org/repo@commit``); defaults to its first file.
    adapter : LoraConfig or None
        The parsed ``adapter_config.json`` of a PEFT adapter.
    """

    name: str
    files: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()
    source: str = ""
    adapter: LoraConfig | None = None

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def size_bytes(self) -> int:
        """Total size of its weight files on disk."""
        return sum(os.path.getsize(f) for f in self.files if os.path.exists(f))

    @property
    def format(self) -> str:
        """``"peft"``, ``"safetensors"``, ``"sharded"`` or ``"torch"``."""
        if self.adapter is not None:
            return "peft"
        if self.files and self.files[0].endswith(".safetensors"):
            return "sharded" if len(self.files) > 1 else "safetensors"
        return "torch"


@lru_cache(maxsize=8192)
def _file_index(path: str, mtime_ns: int, size: int) -> dict[str, tuple[TensorInfo, str, str]]:
    out: dict[str, tuple[TensorInfo, str, str]] = {}
    for raw, (shape, dtype) in readers.read_header(path).items():
        name = canonical_name(raw)
        out.setdefault(name, (TensorInfo(name, tuple(shape), dtype), path, raw))
    return out


def model_headers(model: ModelRef) -> dict[str, tuple[TensorInfo, str, str]]:
    """``{canonical name: (info, path, stored name)}`` of one model, from headers only.

    Cached per file (path, mtime, size): validating a model and cataloguing its family parse
    each header once.

    Raises
    ------
    InputError
        If a file cannot be read, or one tensor name is held by two of the model's files (which
        copy to use would be a guess: a folder of separate models, or a broken checkpoint).
    """
    if len(model.files) == 1:
        return _file_index(model.files[0], *_stat_key(model.files[0]))
    out: dict[str, tuple[TensorInfo, str, str]] = {}
    for path in model.files:
        for name, entry in _file_index(path, *_stat_key(path)).items():
            prev = out.get(name)
            if prev is not None:
                raise InputError(f"model {model.name!r}: tensor {name!r} is in two of its files, "
                                 f"{prev[1]} and {path}")
            out[name] = entry
    return out


def _stat_key(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    return st.st_mtime_ns, st.st_size


@dataclass
class Family:
    """N models with the same tensor names/shapes for the layer groups of interest.

    Attributes
    ----------
    name : str
        Display name (``zoo:planted``, a folder name...).
    source : str
        The SOURCE string it was resolved from (round-trips through :func:`explorer.load_family`).
    models : list of ModelRef
    skipped : list of Skipped
        One entry per member that could not be used (name, path, reason; as a string, one line).
    base : ModelRef or None
        The base model: enables the ``delta`` view (W_i - W_base) for dense groups.
    parts : tuple of str
        The SOURCE strings merged into this family (a manifest lists several); ``(source,)`` else.
    base_source : str or None
        SOURCE of the base model, as a manifest records it.
    """

    name: str
    source: str
    models: list[ModelRef]
    skipped: list[Skipped] = field(default_factory=list)
    base: ModelRef | None = None
    parts: tuple[str, ...] = ()
    base_source: str | None = None

    def __post_init__(self) -> None:
        self.skipped = [_as_skipped(s) for s in self.skipped]
        if not self.models:
            why = f" (skipped: {'; '.join(self.skipped[:3])})" if self.skipped else ""
            raise InputError(f"{self.source}: the family has no usable models{why}")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"{self.source}: duplicate model names {dup}")
        if not self.parts:
            self.parts = (self.source,)

    def __len__(self) -> int:
        return len(self.models)

    @cached_property
    def _index(self) -> dict[str, dict[str, tuple[TensorInfo, str, str]]]:
        out = {m.name: model_headers(m) for m in self.models}
        if self.base is not None:
            out[self.base.name] = model_headers(self.base)
        return out

    @cached_property
    def headers(self) -> dict[str, dict[str, TensorInfo]]:
        """Per model name, the tensors it holds by canonical name (file headers only)."""
        return {m.name: {k: v[0] for k, v in self._index[m.name].items()} for m in self.models}

    @cached_property
    def base_headers(self) -> dict[str, TensorInfo]:
        """The base model's tensors by canonical name (empty without a base)."""
        if self.base is None:
            return {}
        return {k: v[0] for k, v in self._index[self.base.name].items()}

    @property
    def kind(self) -> str:
        """``"lora"`` if any member is a LoRA adapter (by config or by tensor names), else ``"dense"``."""
        if any(m.adapter is not None for m in self.models):
            return "lora"
        first = self._index[self.models[0].name]
        return "lora" if any(n.endswith(".lora_A.weight") for n in first) else "dense"

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per model: ``name``, ``source``, ``size_bytes``, ``format``, ``files``, then labels."""
        rows = []
        for m in self.models:
            row: dict[str, object] = {
                "name": m.name, "source": m.source or (m.files[0] if m.files else ""),
                "size_bytes": m.size_bytes, "format": m.format, "files": len(m.files),
            }
            for k, v in m.labels:
                row.setdefault(k, v)
            rows.append(row)
        return pd.DataFrame(rows)

    def locate(self, model: ModelRef, name: str) -> tuple[str, str]:
        """``(file path, stored tensor name)`` of a tensor, by canonical or stored name.

        For readers that slice files themselves (``safe_open(path).get_slice(stored)``).

        Raises
        ------
        InputError
            If the model lacks the tensor.
        """
        entry = self._index[model.name].get(canonical_name(name))
        if entry is None:
            raise InputError(f"model {model.name!r}: tensor {name!r} is missing")
        return entry[1], entry[2]

    def has_tensor(self, model: ModelRef, name: str) -> bool:
        return canonical_name(name) in self._index[model.name]

    def tensor(self, model: ModelRef, name: str) -> torch.Tensor:
        """Read one tensor of one model (or of the base), upcast to at least float32.

        Raises
        ------
        InputError
            If the model lacks the tensor or its dtype is not floating point.
        MemberError
            If it holds NaN or Inf (only reading the data shows it): the pipeline skips the model.
        """
        entry = self._index[model.name].get(canonical_name(name))
        if entry is None:
            raise InputError(f"model {model.name!r}: tensor {name!r} is missing")
        info, path, raw = entry
        if info.dtype not in readers.FLOAT_DTYPES:
            raise InputError(
                f"model {model.name!r}: tensor {name!r} has dtype {info.dtype}, which cannot be analysed "
                f"(supported: {', '.join(readers.FLOAT_DTYPES)})"
            )
        t = upcast(readers.load_tensor(path, raw))
        check_finite(t, model.name, name, path)
        return t

    def iter_tensors(self, name: str) -> Iterator[tuple[ModelRef, torch.Tensor]]:
        """Yield ``(model, tensor)`` for one tensor name, one model at a time."""
        for m in self.models:
            yield m, self.tensor(m, name)

    def lora_scale(self, model: ModelRef, module: str) -> float:
        """The factor s of ΔW = s B A for one LoRA module of one model.

        From ``adapter_config.json`` when the model has one; else from a stored ``<module>.alpha``
        tensor (kohya files: s = alpha / r, r the stored rank); else 1.
        """
        if model.adapter is not None:
            return model.adapter.scale(module)
        idx = self._index[model.name]
        if module + LORA_ALPHA in idx:
            alpha = float(self.tensor(model, module + LORA_ALPHA).reshape(-1)[0])
            rank = idx[module + ".lora_A.weight"][0].shape[0]
            return alpha / rank
        return 1.0

    def without(self, reasons: Mapping[str, str]) -> Family:
        """A copy without the models named in ``reasons`` (name -> why), listed in ``skipped``."""
        by_name = {m.name: m for m in self.models}
        return self.skip([Skipped(n, _member_path(by_name[n]) if n in by_name else "", why)
                          for n, why in reasons.items()])

    def skip(self, entries: Sequence[Skipped]) -> Family:
        """A copy without the models that ``entries`` name, with the entries added to ``skipped``.

        Raises
        ------
        InputError
            If no model is left (the message names the first skipped members).
        """
        gone = {e.name for e in entries}
        keep = [m for m in self.models if m.name not in gone]
        return replace(self, models=keep, skipped=list(self.skipped) + list(entries))


def _member_path(model: ModelRef) -> str:
    """Where a member is, for its :class:`Skipped` entry: its source (folder, file, hf:...)."""
    return model.source or (model.files[0] if model.files else "")


def labels_from_mapping(d: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """Turn a metadata mapping into the sorted, hashable form :class:`ModelRef` stores."""
    return tuple(sorted((str(k), str(v)) for k, v in d.items() if v is not None and str(v) != ""))
