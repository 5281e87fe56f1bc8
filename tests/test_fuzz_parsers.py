"""Hypothesis fuzzing of the safetensors-header and manifest parsers (bounded example counts).

Any exception other than ExplorerError is a failure: hostile bytes must end in one clear
message, never in a crash.  A header the parser accepts must also load tensor by tensor.
"""
from __future__ import annotations

import itertools
import json
import struct
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.core.errors import ExplorerError
from explorer.sources import readers
from explorer.sources.manifest import check_manifest, read_manifest

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-parsers-"))
_COUNTER = itertools.count()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    import shutil

    shutil.rmtree(_DIR, ignore_errors=True)


def _fresh(suffix: str) -> Path:
    # A new name per example: the header cache is keyed by path, mtime and size.
    return _DIR / f"f{next(_COUNTER)}{suffix}"


def _parse(blob: bytes) -> None:
    p = _fresh(".safetensors")
    p.write_bytes(blob)
    try:
        header = readers.read_header(str(p))
        for name in header:
            readers.load_tensor(str(p), name)
    except ExplorerError:
        pass
    finally:
        p.unlink()


DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "X9", ""])
INTS = st.one_of(st.integers(-3, 70), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=3),
                 st.none(), st.booleans())
SPEC = st.one_of(
    st.fixed_dictionaries({"dtype": DTYPES, "shape": st.lists(INTS, max_size=3),
                           "data_offsets": st.lists(INTS, min_size=0, max_size=3)}),
    st.fixed_dictionaries({"dtype": st.just("F32"), "shape": st.lists(st.integers(0, 4), min_size=2, max_size=2),
                           "data_offsets": st.tuples(st.integers(0, 80), st.integers(0, 80)).map(list)}),
    st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3), st.none(),
)
HEADERS = st.dictionaries(st.text(max_size=12), SPEC, max_size=4)


@SETTINGS
@given(header=HEADERS, data=st.binary(max_size=96), delta=st.integers(-8, 8))
def test_structured_headers_never_crash(header, data, delta):
    blob = json.dumps(header).encode()
    _parse(struct.pack("<Q", max(len(blob) + delta, 0)) + blob + data)


@SETTINGS
@given(raw=st.binary(max_size=256))
def test_random_bytes_never_crash(raw):
    _parse(raw)


@SETTINGS
@given(length=st.integers(0, 2**64 - 1), body=st.binary(max_size=64))
def test_any_declared_length_never_crashes(length, body):
    _parse(struct.pack("<Q", length) + body)


@SETTINGS
@given(header=HEADERS, flip=st.integers(0, 400), byte=st.integers(0, 255))
def test_mutated_valid_files_never_crash(header, flip, byte):
    import torch
    from safetensors.torch import save

    good = bytearray(save({"layers.0.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                           "b": torch.ones(2, dtype=torch.float16)}))
    good[flip % len(good)] = byte
    _parse(bytes(good))


# ----------------------------------------------------------------------------- manifests
YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=12,
)
MANIFESTS = st.one_of(
    YAML_VALUES,
    st.fixed_dictionaries({"sources": YAML_VALUES}, optional={"labels": YAML_VALUES, "base": YAML_VALUES,
                                                             "name": YAML_VALUES, "name_regex": YAML_VALUES}),
)


@SETTINGS
@given(data=MANIFESTS, as_json=st.booleans())
def test_manifest_structures_never_crash(data, as_json):
    p = _fresh(".json" if as_json else ".yaml")
    p.write_text(json.dumps(data) if as_json else yaml.safe_dump(data), encoding="utf-8")
    try:
        out = read_manifest(p)
        assert all(isinstance(s, str) for s in out["sources"])
        assert all(isinstance(v, dict) for v in out["labels"].values())
    except ExplorerError:
        pass
    finally:
        p.unlink()


@SETTINGS
@given(text=st.text(max_size=200), suffix=st.sampled_from([".yaml", ".yml", ".json"]))
def test_manifest_text_never_crashes(text, suffix):
    p = _fresh(suffix)
    p.write_bytes(text.encode("utf-8", "surrogatepass"))  # lone surrogates give invalid UTF-8 on purpose
    try:
        read_manifest(p)
    except ExplorerError:
        pass
    finally:
        p.unlink()


@SETTINGS
@given(data=MANIFESTS)
def test_check_manifest_never_crashes(data):
    try:
        check_manifest(data, "m.yaml")
    except ExplorerError:
        pass
