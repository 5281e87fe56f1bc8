"""The corpus of broken and hostile inputs, generated on demand (used by tests/test_hostile_inputs.py).

Each case writes its input under a folder and returns a :class:`Case`: the SOURCE string, the
CLI command that must fail (``inspect`` reads headers only; ``analyze`` is needed for what only
reading tensor data reveals, such as NaN), and a fragment the one-line message must contain.
:func:`member_family` places the same inputs as members of a family beside good models (used by
tests/test_skipped_members.py: each must be skipped and named, or refused with ``--strict``).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tests.helpers import write_adapter

LAYER = "layers.0"


@dataclass(frozen=True)
class Case:
    source: str
    command: str  # "inspect" or "analyze"
    expect: str  # fragment of the message
    names: str | None = None  # a name the message must hold (the file/tensor), default: none extra


def raw_safetensors(path: Path, header: bytes | dict, data: bytes = b"", length: int | None = None) -> Path:
    """Write a safetensors file byte by byte: 8-byte length, header, data (any of them wrong on purpose)."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(blob) if length is None else length
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path


def _f32(shape, begin=0) -> dict:
    numel = int(np.prod(shape))
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + 4 * numel]}


def _good(path: Path, w: torch.Tensor | None = None, name: str = "layers.0.weight") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: torch.randn(4, 3) if w is None else w}, str(path))
    return path


class Evil:
    """A pickle payload that would create ``marker`` when unpickled by plain ``pickle``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(path: Path, marker: Path) -> Path:
    """A torch zip checkpoint whose pickle calls os.system (weights_only must refuse it)."""
    torch.save({"layers.0.weight": torch.ones(2, 2), "payload": Evil(marker)}, str(path))
    return path


def _adapter(folder: Path, config: str | None) -> Path:
    """A good rank-2 adapter whose ``adapter_config.json`` is then replaced by ``config`` (None: removed)."""
    write_adapter(folder, {"blk.0.fc": (torch.randn(2, 5), torch.randn(6, 2))}, 2)
    cfg = folder / "adapter_config.json"
    if config is None:
        cfg.unlink()
    else:
        cfg.write_text(config)
    return folder


def _sharded(folder: Path, weight_map: dict | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _good(folder / "model-00001-of-00002.safetensors")
    text = weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map})
    (folder / "model.safetensors.index.json").write_text(text)
    return folder


def _build(root: Path) -> dict[str, Case]:
    d = root
    M = 1 << 20
    cases: dict[str, Case] = {}

    def st(name: str, expect: str, header, data=b"", length=None, command="inspect") -> None:
        p = raw_safetensors(d / f"{name}.safetensors", header, data, length)
        cases[name] = Case(str(p), command, expect, p.name)

    good_header = {"layers.0.weight": _f32((4, 4))}
    (d / "empty_file.safetensors").write_bytes(b"")
    cases["empty_file"] = Case(str(d / "empty_file.safetensors"), "inspect", "shorter than its 8-byte header",
                               "empty_file")
    (d / "five_bytes.safetensors").write_bytes(b"\x01\x02\x03\x04\x05")
    cases["five_bytes"] = Case(str(d / "five_bytes.safetensors"), "inspect", "shorter than", "five_bytes")
    st("header_past_eof", "truncated or not safetensors", good_header, b"\0" * 64, length=10_000)
    st("oversized_header", "over the 100 MB limit", b"{}", length=200 * M)
    st("invalid_json", "not valid JSON", b'{"layers.0.weight": {"dtype": "F32",')
    st("header_is_list", "not a JSON object", b"[1, 2, 3]")
    st("non_utf8_name", "not valid JSON", b'{"layers.\xff\xfe.weight": ' + json.dumps(_f32((4, 4))).encode() + b"}",
       b"\0" * 64)
    st("lone_surrogate_name", "not valid UTF-8", b'{"layers.\\ud800.weight": ' + json.dumps(_f32((4, 4))).encode()
       + b"}", b"\0" * 64)
    st("duplicate_names", "twice", b'{"layers.0.weight": ' + json.dumps(_f32((4, 4))).encode()
       + b', "layers.0.weight": ' + json.dumps(_f32((4, 4), 64)).encode() + b"}", b"\0" * 128)
    st("deep_nesting", "not valid JSON", b"[" * 200_000 + b"]" * 200_000)
    st("truncated_data", "beyond the end of the file", good_header, b"\0" * 40)
    st("offsets_out_of_range", "beyond the end of the file",
       {"layers.0.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [1000, 1064]}}, b"\0" * 64)
    st("overlapping_offsets", "overlap",
       {"layers.0.weight": _f32((4, 4)), "layers.1.weight": _f32((4, 4), 32)}, b"\0" * 96)
    st("dtype_mismatch", "data bytes for shape",
       {"layers.0.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}}, b"\0" * 32)
    st("shape_mismatch", "data bytes for shape",
       {"layers.0.weight": {"dtype": "F16", "shape": [4, 5], "data_offsets": [0, 32]}}, b"\0" * 32)
    st("negative_shape", "negative dimension",
       {"layers.0.weight": {"dtype": "F32", "shape": [-4, -4], "data_offsets": [0, 64]}}, b"\0" * 64)
    st("entry_missing_dtype", "malformed header entry",
       {"layers.0.weight": {"shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 64)
    st("float_offsets", "malformed header entry",
       {"layers.0.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0.0, 64.5]}}, b"\0" * 64)

    nan = torch.randn(4, 3)
    nan[1, 2] = float("nan")
    _good(d / "nan" / "a.safetensors")
    _good(d / "nan" / "b.safetensors", nan)
    # A NaN/Inf member is skipped when its data is read (see member_family); alone, it leaves no model.
    cases["nan_tensor"] = Case(str(d / "nan" / "b.safetensors"), "analyze", "holds NaN or Inf", "b.safetensors")
    inf = torch.randn(4, 3, dtype=torch.float16)
    inf[0, 0] = float("inf")
    _good(d / "inf" / "a.safetensors")
    _good(d / "inf" / "b.safetensors", inf)
    cases["inf_tensor"] = Case(str(d / "inf" / "b.safetensors"), "analyze", "holds NaN or Inf", "b.safetensors")
    p = _good(d / "zero_size.safetensors", torch.zeros(0, 4))
    cases["zero_size"] = Case(str(p), "inspect", "no non-empty 2-D weight tensor", p.name)
    d.joinpath("int_only").mkdir()
    save_file({"layers.0.weight": torch.ones(3, 3, dtype=torch.int32)}, str(d / "int_only" / "m.safetensors"))
    cases["integer_only"] = Case(str(d / "int_only"), "inspect", "no 2-D weight tensor", "int_only")

    (d / "empty_folder").mkdir()
    cases["empty_folder"] = Case(str(d / "empty_folder"), "inspect", "holds no models", "empty_folder")
    (d / "only_text").mkdir()
    (d / "only_text" / "notes.txt").write_text("hello")
    cases["no_weight_files"] = Case(str(d / "only_text"), "inspect", "holds no models", "only_text")
    os.symlink(d / "loop", d / "loop")
    cases["symlink_loop"] = Case(str(d / "loop"), "inspect", "symlink loop", "loop")
    (d / "loop_member").mkdir()
    os.symlink(d / "loop_member" / "x.safetensors", d / "loop_member" / "x.safetensors")
    cases["symlink_loop_member"] = Case(str(d / "loop_member"), "inspect", "symlink loop", "x.safetensors")
    os.symlink(d / "a" / "b", d / "dangling")
    cases["dangling_symlink"] = Case(str(d / "dangling"), "inspect", "symlink to a missing", "dangling")

    marker = d / "PWNED"
    p = evil_pickle(d / "evil.pt", marker)
    cases["pickle_code_pt"] = Case(str(p), "inspect", "refused by torch.load(weights_only=True)", "evil.pt")
    (d / "evil_folder").mkdir()
    evil_pickle(d / "evil_folder" / "pytorch_model.bin", marker)
    cases["pickle_code_bin_in_folder"] = Case(str(d / "evil_folder"), "inspect", "weights_only", "pytorch_model.bin")
    torch.save({"layers.0.weight": torch.randn(64, 64)}, str(d / "cut.pt"))
    blob = (d / "cut.pt").read_bytes()
    (d / "cut.pt").write_bytes(blob[: len(blob) // 2])
    cases["truncated_torch"] = Case(str(d / "cut.pt"), "inspect", "corrupt or truncated torch file", "cut.pt")
    torch.save([1, 2, 3], str(d / "list.pt"))
    cases["torch_not_state_dict"] = Case(str(d / "list.pt"), "inspect", "holds no state dict", "list.pt")

    a = _adapter(d / "adapter_no_config", None)
    cases["adapter_config_missing"] = Case(str(a), "inspect", "but no adapter_config.json", "adapter_no_config")
    a = _adapter(d / "adapter_bad_json", "{r: 8,")
    cases["adapter_config_invalid"] = Case(str(a), "inspect", "cannot be parsed as JSON", "adapter_config.json")
    a = _adapter(d / "adapter_r0", json.dumps({"peft_type": "LORA", "r": 0, "lora_alpha": 8}))
    cases["adapter_r0"] = Case(str(a), "inspect", "rank r must be positive", "adapter_config.json")
    a = _adapter(d / "adapter_r_text", json.dumps({"peft_type": "LORA", "r": "eight"}))
    cases["adapter_r_malformed"] = Case(str(a), "inspect", "is malformed", "adapter_config.json")
    a = _adapter(d / "adapter_ia3", json.dumps({"peft_type": "IA3"}))
    cases["adapter_not_lora"] = Case(str(a), "inspect", "only LORA adapters", "adapter_config.json")

    _good(d / "mixed" / "m0.safetensors", torch.randn(4, 3))
    _good(d / "mixed" / "m1.safetensors", torch.randn(5, 3))
    _good(d / "mixed" / "m2.safetensors", torch.randn(4, 3))
    cases["mixed_shapes"] = Case(str(d / "mixed"), "analyze", "has shape (5, 3), expected (4, 3)", "m1")

    s = _sharded(d / "shard_missing", {"layers.0.weight": "model-00001-of-00002.safetensors",
                                        "layers.1.weight": "model-00002-of-00002.safetensors"})
    cases["shard_missing"] = Case(str(s), "inspect", "is missing", "model-00002-of-00002.safetensors")
    s = _sharded(d / "shard_bad_index", "not json")
    cases["shard_index_invalid"] = Case(str(s), "inspect", "is not a checkpoint index", "model.safetensors.index.json")
    s = _sharded(d / "shard_traversal", {"layers.0.weight": "../evil.pt/../../etc/passwd"})
    cases["shard_path_traversal"] = Case(str(s), "inspect", "not a plain file name", "index.json")
    s = _sharded(d / "shard_tensor_missing", {"layers.0.weight": "model-00001-of-00002.safetensors",
                                               "layers.9.weight": "model-00001-of-00002.safetensors"})
    cases["shard_tensor_missing"] = Case(str(s), "inspect", "missing from shard", "layers.9.weight")

    for name, src in {"hub_empty": "hf:", "hub_three_parts": "hf:a/b/c", "hub_traversal": "hf:../etc",
                      "hub_dotdot_name": "hf:org/..", "hub_space": "hf:org/re po", "hub_double_dash": "hf:org/x--y",
                      "hub_leading_dot": "hf:org/.hidden", "hub_bad_revision": "hf:org/name@../../x"}.items():
        cases[name] = Case(src, "inspect", "hf:", None)

    (d / "bad.yaml").write_text("sources: [a, b\nname: : :")
    cases["manifest_invalid_yaml"] = Case(str(d / "bad.yaml"), "inspect", "cannot be parsed as a manifest", "bad.yaml")
    (d / "nosources.yaml").write_text("name: x\n")
    cases["manifest_no_sources"] = Case(str(d / "nosources.yaml"), "inspect", "'sources'", "nosources.yaml")
    (d / "self.yaml").write_text("sources: [./self.yaml]\n")
    cases["manifest_lists_itself"] = Case(str(d / "self.yaml"), "inspect", "nest more than 4 deep", "self.yaml")
    (d / "pytag.yaml").write_text(f"sources: !!python/object/apply:os.system ['touch {marker}']\n")
    cases["manifest_python_tag"] = Case(str(d / "pytag.yaml"), "inspect", "cannot be parsed as a manifest", "pytag.yaml")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (d / "bomb.yaml").write_text(bomb + "sources: [./nan]\nlabels: {m: {x: *i}}\nname: *i\n")
    cases["manifest_alias_bomb"] = Case(str(d / "bomb.yaml"), "inspect", "plain labels", "bomb.yaml")
    return cases


_CACHE: dict[str, dict[str, Case]] = {}


def corpus(root: Path) -> dict[str, Case]:
    """Build the corpus once per root folder; return ``{case id: Case}``."""
    key = str(root)
    if key not in _CACHE:
        root.mkdir(parents=True, exist_ok=True)
        _CACHE[key] = _build(root)
    return _CACHE[key]



# ------------------------------------------------------------------ the same cases as family members
# Not members of a family: Hub ids and manifests are other kinds of SOURCE, and a family whose models
# disagree on a group's shape is refused for that group (a choice of group, not a bad member).
NOT_MEMBERS = ("hub_", "manifest_", "mixed_shapes")
# What the member's skip reason says where it differs from the case's own (top-level) message.
_MEMBER_EXPECT = {
    "empty_folder": "holds no weight files", "no_weight_files": "holds no weight files",
    "symlink_loop_member": "holds no weight files", "symlink_loop": "symlink loop", "dangling_symlink": "symlink",
}


@dataclass(frozen=True)
class Member:
    name: str  # the member's name in the family (the case id)
    path: str  # where it is in the family folder
    expect: str  # fragment of its skip reason
    on_read: bool  # True if only reading its data shows the problem (NaN/Inf): skipped by analyze, not load


def member_family(root: Path, cases: dict[str, Case], n_good: int = 3) -> tuple[Path, dict[str, Member]]:
    """A family folder of ``n_good`` good models plus every member-kind hostile case, each named by its id.

    The good models hold ``layers.0.weight`` of shape (4, 3), like the NaN/Inf members, so those
    load and are found only when ``analyze`` reads them.
    """
    fam = root / "members"
    fam.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n_good):
        _good(fam / f"good{i}.safetensors", torch.randn(4, 3, generator=g))
    members: dict[str, Member] = {}
    for cid, case in cases.items():
        if cid.startswith(NOT_MEMBERS):
            continue
        src = Path(case.source)
        if cid in ("symlink_loop", "dangling_symlink"):
            # As a member, the link carries a weight-file name (a bare name is no member at all).
            dest = fam / f"{cid}.safetensors"
            os.symlink(dest if cid == "symlink_loop" else root / "nowhere" / "x.safetensors", dest)
        elif src.is_dir():
            dest = fam / cid
            shutil.copytree(src, dest, symlinks=True)
        else:
            dest = fam / f"{cid}{src.suffix}"
            shutil.copy2(src, dest)
        members[cid] = Member(cid, str(dest), _MEMBER_EXPECT.get(cid, case.expect), cid in ("nan_tensor", "inf_tensor"))
    return fam, members
