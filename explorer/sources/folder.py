"""A local folder as a family: each model is a weight file or a subfolder.

Members (searched in ``models/`` when the folder has one):

- a file ``*.safetensors``, ``*.pt``, ``*.pth`` or ``*.bin`` (a state dict);
- a subfolder holding a PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``
  or ``.bin``), a sharded checkpoint (``*.index.json`` + shards), or weight files.

A folder that is itself an adapter or a sharded checkpoint is a family of one.  A ``base``
subfolder or a ``base.*`` weight file next to the members is the base model.  Labels come from
the adapter config, the README model card, a name regex and a ``metadata.csv`` sidecar (see
:mod:`explorer.sources.labels`).  Members that cannot be read are left out and listed in
``Family.skipped`` (name, path, reason), a weight-file name that is a broken symlink included.
"""
from __future__ import annotations

from pathlib import Path

from explorer.core.errors import InputError
from explorer.sources import readers, sharded
from explorer.sources.family import (
    Family,
    ModelRef,
    Skipped,
    labels_from_mapping,
    model_headers,
)
from explorer.sources.labels import (
    compile_name_regex,
    read_sidecar,
    readme_labels,
    regex_labels,
)
from explorer.sources.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_adapter_config
from explorer.sources.policy import check_local_path

__all__ = ["load_folder", "load_model", "read_sidecar", "is_model_dir"]


def is_model_dir(folder: Path) -> bool:
    """True if ``folder`` is one model (adapter, sharded checkpoint, or loose weight files)."""
    if (folder / ADAPTER_CONFIG).is_file() or sharded.find_index(folder) is not None:
        return True
    return any(p.is_file() and readers.is_weight_file(p.name) for p in folder.iterdir())


def _dir_files(folder: Path) -> tuple[tuple[str, ...], dict[str, str] | None, Path | None]:
    index = sharded.find_index(folder)
    if index is not None:
        files, weight_map = sharded.read_index(index)
        return files, weight_map, index
    weights = sorted(p for p in folder.iterdir() if p.is_file() and readers.is_weight_file(p.name))
    # A Hub-style folder often has both formats of one checkpoint: use the safetensors copy.
    st = [p for p in weights if p.name.endswith(".safetensors")]
    weights = st or weights
    if not weights:
        raise InputError(f"{folder}: holds no weight files (.safetensors, .pt, .pth, .bin)")
    return tuple(str(p) for p in weights), None, None


def load_model(path: str | Path, name: str, labels: dict[str, object] | None = None, source: str = "") -> ModelRef:
    """Build and validate one model from a weight file or a model folder.

    Parameters
    ----------
    path : path
        A weight file, or a folder (PEFT adapter, sharded checkpoint, weight files).
    name : str
    labels : dict, optional
        Extra labels; they override those read from the adapter config and model card.
    source : str, optional
        Recorded as the model's source (defaults to ``path``).

    Raises
    ------
    InputError
        If the model cannot be read: naming the file and what is wrong.
    """
    path = Path(path)
    check_local_path(path, "model")  # server mode: a member symlinked out of the roots is refused
    merged: dict[str, object] = {}
    adapter = None
    weight_map = index = None
    if path.is_file():
        if not readers.is_weight_file(path.name):
            raise InputError(f"{path}: is not a weight file (.safetensors, .pt, .pth, .bin)")
        files: tuple[str, ...] = (str(path),)
    elif path.is_dir():
        if (path / ADAPTER_CONFIG).is_file():
            adapter, merged = read_adapter_config(path / ADAPTER_CONFIG)
            found = [path / w for w in ADAPTER_WEIGHTS if (path / w).is_file()]
            if not found:
                raise InputError(f"{path}: has {ADAPTER_CONFIG} but no {' or '.join(ADAPTER_WEIGHTS)}")
            files = (str(found[0]),)
        else:
            orphan = [w for w in ADAPTER_WEIGHTS if (path / w).is_file()]
            if orphan:
                # PEFT weights without their config: the LoRA scale alpha/r would be a guess.
                raise InputError(f"{path}: has {orphan[0]} but no {ADAPTER_CONFIG} (needed for the LoRA scale alpha/r)")
            files, weight_map, index = _dir_files(path)
        if (path / "README.md").exists():
            check_local_path(path / "README.md", "README.md")
        merged.update(readme_labels(path))
    elif path.is_symlink():
        raise InputError(f"{path}: is a symlink to a missing file, or a symlink loop")
    else:
        raise InputError(f"{path}: does not exist")
    merged.update(labels or {})
    for f in files:
        check_local_path(f, "weight file")
    model = ModelRef(name, files, labels_from_mapping(merged), source or str(path), adapter)
    tensors = model_headers(model)  # reads every header: corrupt/truncated files fail here
    if index is not None and weight_map is not None:
        sharded.check_shards(index, weight_map)
    mats = [info for info, _, _ in tensors.values() if len(info.shape) == 2 and min(info.shape) > 0]
    if not mats:
        raise InputError(f"{path}: holds no non-empty 2-D weight tensor")
    if not any(info.dtype in readers.FLOAT_DTYPES for info in mats):
        # Integer/bool matrices (masks, indices) are not weights: such a member could never be analysed.
        found = ", ".join(sorted({info.dtype for info in mats}))
        raise InputError(f"{path}: holds no 2-D weight tensor of a floating-point dtype (only {found})")
    return model


def _members(search: Path) -> list[Path]:
    out = []
    for p in sorted(search.iterdir()):
        if p.name.startswith((".", "_")) or p.name == "base" or p.stem == "base":
            continue
        if (p.is_file() and readers.is_weight_file(p.name)) or p.is_dir():
            out.append(p)
        elif p.is_symlink() and not p.exists() and readers.is_weight_file(p.name):
            out.append(p)  # a broken link named like a weight file: skipped and named, not ignored
    return out


def find_base(folder: Path) -> Path | None:
    """A ``base`` subfolder or ``base.<ext>`` weight file in ``folder``, or ``None``."""
    if (folder / "base").is_dir():
        return folder / "base"
    for ext in readers.WEIGHT_SUFFIXES:
        if (folder / f"base{ext}").is_file():
            return folder / f"base{ext}"
    return None


def load_folder(
    path: str | Path,
    name: str | None = None,
    source: str | None = None,
    *,
    name_regex: str | None = None,
    base: str | Path | None = None,
) -> Family:
    """Build a :class:`Family` from a local folder.

    Parameters
    ----------
    path : path
        The family folder (see the module docstring for the layouts it accepts).
    name, source : str, optional
        Display name and SOURCE string (default: the folder's name and path).
    name_regex : str, optional
        Regex with named groups applied to each model's name, e.g. ``seed(?P<seed>\\d+)``.
    base : path, optional
        The base model (file or folder); defaults to the folder's ``base`` entry, if any.

    Raises
    ------
    InputError
        If the folder is missing or empty, or no member can be read.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a folder")
    rx = compile_name_regex(name_regex)
    if (folder / "metadata.csv").exists():
        check_local_path(folder / "metadata.csv", "metadata.csv")
    sidecar = read_sidecar(folder)
    search = folder / "models" if (folder / "models").is_dir() else folder
    single = (search / ADAPTER_CONFIG).is_file() or sharded.find_index(search) is not None
    orphan = [w for w in ADAPTER_WEIGHTS if (search / w).is_file()]
    if orphan and not single:
        raise InputError(f"{search}: has {orphan[0]} but no {ADAPTER_CONFIG} (needed for the LoRA scale alpha/r)")
    members = [search] if single else _members(search)
    models: list[ModelRef] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for p in members:
        mname = p.name if p.is_dir() else p.stem
        if mname in seen:
            mname = p.name
        labels = {**regex_labels(rx, mname), **sidecar.get(mname, {})}
        try:
            models.append(load_model(p, mname, labels))
            seen.add(mname)
        except InputError as exc:
            skipped.append(Skipped(mname, str(p), str(exc)))
    if not models and not skipped:
        raise InputError(f"{search}: holds no models (.safetensors, .pt, .pth, .bin files or model subfolders)")
    base_path = Path(base).expanduser() if base is not None else find_base(folder)
    base_ref = load_model(base_path, "base") if base_path is not None else None
    return Family(
        name=name or folder.name, source=source or str(folder), models=models, skipped=skipped,
        base=base_ref, base_source=str(base_path) if base_path is not None else None,
    )
