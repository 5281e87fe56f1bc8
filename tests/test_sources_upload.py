"""Uploads (content-addressed folders under the cache root) and family manifests."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save, save_file

from explorer import InputError, load_family
from explorer.catalog.groups import build_catalog, find_group
from explorer.sources.manifest import save_manifest
from explorer.sources.resolve import load_manifest
from explorer.sources.upload import family_from_uploads
from tests.helpers import write_adapter, write_family


def _st_bytes(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return save({"layers.0.weight": torch.randn(5, 4, generator=g)})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_upload_files_is_content_addressed(cache):
    buf = io.BytesIO()
    torch.save({"state_dict": {"layers.0.weight": torch.ones(5, 4)}}, buf)
    files = [("a.safetensors", _st_bytes(0)), ("b.pt", buf.getvalue()),
             ("metadata.csv", b"name,task\na,qa\nb,nli\n")]
    fam = family_from_uploads(files)
    assert [m.name for m in fam.models] == ["a", "b"]
    assert fam.metadata.set_index("name").loc["b", "task"] == "nli"
    assert str(cache / "uploads") in fam.source
    again = family_from_uploads(list(reversed(files)))
    assert again.source == fam.source  # same content, same folder
    reopened = load_family(fam.source)  # the source string reopens it
    assert [m.name for m in reopened.models] == ["a", "b"]
    other = family_from_uploads([("a.safetensors", _st_bytes(1))])
    assert other.source != fam.source


def test_upload_zip_of_adapter_folders_and_bad_names(cache, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(2):
            g = torch.Generator().manual_seed(i)
            ad = write_adapter(tmp_path / "src" / f"ad{i}", {"fc": (torch.randn(2, 6, generator=g),
                                                                   torch.randn(3, 2, generator=g))}, 2, 4)
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                zf.write(ad / f, f"loras/ad{i}/{f}")
    fam = family_from_uploads([("loras.zip", buf.getvalue())])
    assert [m.name for m in fam.models] == ["ad0", "ad1"] and fam.kind == "lora"
    assert find_group(build_catalog(fam), "fc").shape == (3, 6)
    assert [m.name for m in load_family(fam.source).models] == ["ad0", "ad1"]
    with pytest.raises(InputError, match="not a plain relative file name"):
        family_from_uploads([("../evil.safetensors", _st_bytes(0))])
    with pytest.raises(InputError, match="not a readable zip"):
        family_from_uploads([("x.zip", b"PK\x03\x04broken")])
    with pytest.raises(InputError, match="no files"):
        family_from_uploads([])


def test_manifest_round_trip(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, seeds in ((a, (0, 1)), (b, (2,))):
        write_family(d, {f"m{s}": torch.randn(5, 4, generator=torch.Generator().manual_seed(s)).numpy() for s in seeds})
    write_family(tmp_path, {"base": np.zeros((5, 4))})
    man = tmp_path / "fam.yaml"
    man.write_text(yaml.safe_dump({"name": "mix", "sources": ["a", str(b)], "base": "base.safetensors",
                                   "name_regex": r"m(?P<seed>\d)", "labels": {"m2": {"task": "qa"}}}))
    fam = load_family(str(man))
    assert fam.name == "mix" and [m.name for m in fam.models] == ["m0", "m1", "m2"]
    md = fam.metadata.set_index("name")
    assert md.loc["m2", "task"] == "qa" and md.loc["m1", "seed"] == "1"
    g = find_group(build_catalog(fam), "layers.0")
    assert g.in_base
    ref = [fam.tensor(m, g.tensor).numpy() for m in fam.models]
    for ext in ("yaml", "json"):
        out = save_manifest(fam, tmp_path / "saved" / f"again.{ext}")
        back = load_family(str(out))
        assert [m.name for m in back.models] == ["m0", "m1", "m2"] and back.base is not None
        assert back.metadata.set_index("name").loc["m2", "task"] == "qa"
        for m, r in zip(back.models, ref):
            np.testing.assert_array_equal(back.tensor(m, g.tensor).numpy(), r)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(InputError, match="field 'sources' must be a non-empty list"):
        load_manifest(bad)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"sources": ["a", "a"]}))
    fam2 = load_family(str(dup))
    assert len(fam2) == 2 and len(fam2.skipped) == 2 and "repeats the name" in fam2.skipped[0]


def test_manifest_hub_sources_are_pinned(tmp_path):
    from explorer.sources.family import Family, ModelRef
    from explorer.sources.manifest import manifest_dict

    save_file({"w.weight": torch.ones(2, 2)}, str(tmp_path / "x.safetensors"))
    f = str(tmp_path / "x.safetensors")
    fam = Family("hubfam", "hf:org/a*", [ModelRef("org/a1", (f,), source="hf:org/a1@" + "1" * 40),
                                         ModelRef("org/a2", (f,), source="hf:org/a2@" + "2" * 40)])
    assert manifest_dict(fam)["sources"] == ["hf:org/a1@" + "1" * 40, "hf:org/a2@" + "2" * 40]


# --- Limits, cleanup, collisions and identity of uploads -------------------------------------

import os  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
import zlib  # noqa: E402

from explorer.sources import upload as up  # noqa: E402


def _zero_bomb(members: int = 10, gib_each: int = 1) -> tuple[bytes, int]:
    """A zip of ``members`` members, each ~1 MB of deflate that unpacks to ``gib_each`` GiB of zeros.

    Compressing gigabytes takes minutes, so one 16 MiB block of zeros is deflated after a full
    flush (which resets the compressor, so every such block is the same bytes) and repeated;
    zipfile writes the container (stored), then each member's method and size are set to
    deflate and the unpacked size.  The CRC is that of the stored bytes: a reader that does
    not stop the bomb first finds it wrong only after writing every gigabyte.
    """
    block = 16 * 1024**2
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(bytes(block))
    c.flush(zlib.Z_FULL_FLUSH)
    rep = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    usize = gib_each * 1024**3
    raw = rep * (usize // block) + c.flush()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(members):
            zf.writestr(f"bomb/zeros{i}.safetensors", raw)
        offsets = [i.header_offset for i in zf.infolist()]
    data = bytearray(buf.getvalue())
    for off in offsets:  # local headers: method at +8, unpacked size at +22
        data[off + 8:off + 10] = (8).to_bytes(2, "little")
        data[off + 22:off + 26] = usize.to_bytes(4, "little")
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:  # central directory: method at +10, unpacked size at +24
        data[pos + 10:pos + 12] = (8).to_bytes(2, "little")
        data[pos + 24:pos + 28] = usize.to_bytes(4, "little")
        pos = data.find(b"PK\x01\x02", pos + 4)
    return bytes(data), members * usize


def _du(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _left(cache) -> list[str]:
    root = cache / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_zip_bomb_refused_quickly_without_writing(cache, monkeypatch):
    bomb, declared = _zero_bomb()
    assert len(bomb) < 12 * 1024**2 and declared == 10 * 1024**3  # ~10 MB that unpacks to 10 GiB
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf:  # a real archive: the members do inflate to zeros
        with zf.open(zf.infolist()[0]) as m:
            assert m.read(1024**2) == bytes(1024**2)
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"bomb\.zip.*zeros0\.safetensors.*ratio of 200 \(EXPLORER_UPLOAD_MAX_RATIO\)"):
        family_from_uploads([("bomb.zip", io.BytesIO(bomb))])
    # With the ratio allowed, the total limit refuses it, from the zip's directory, before a byte is written.
    monkeypatch.setenv(up.ENV_MAX_RATIO, "1e9")
    monkeypatch.setenv(up.ENV_MAX_BYTES, str(2 * 1024**3))
    with pytest.raises(InputError, match=r"bomb\.zip.*2 GiB per upload \(EXPLORER_UPLOAD_MAX_BYTES\)"):
        family_from_uploads([("bomb.zip", bomb)])
    assert time.monotonic() - t0 < 20
    assert _du(cache) == 0 and _left(cache) == []


def test_streamed_file_stops_at_the_per_file_limit(cache, monkeypatch):
    """A plain file is copied in chunks: the copy stops at the limit (disk usage stays under it)."""
    limit = 1024**2 + 10
    monkeypatch.setenv(up.ENV_MAX_FILE_BYTES, str(limit))
    peak = []

    class Probe(io.BytesIO):
        def read(self, n=-1):
            assert n != -1 and n <= 4 * 1024**2, "read in chunks, never whole"
            peak.append(_du(cache))
            return super().read(n)

    with pytest.raises(InputError, match=r"'big\.safetensors'.*1 MiB per file \(EXPLORER_UPLOAD_MAX_FILE_BYTES\)"):
        family_from_uploads([("big.safetensors", Probe(bytes(5 * 1024**2)))])
    assert peak and max(peak) <= limit
    assert _left(cache) == []


def test_file_count_total_and_session_limits(cache, monkeypatch):
    one = [(f"m{i}.safetensors", _st_bytes(i)) for i in range(4)]
    monkeypatch.setenv(up.ENV_MAX_FILES, "3")
    with pytest.raises(InputError, match=r"'m3\.safetensors'.*3 files \(EXPLORER_UPLOAD_MAX_FILES\)"):
        family_from_uploads(one)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in one:
            zf.writestr(f"fam/{n}", d)
    with pytest.raises(InputError, match=r"'fam\.zip': holds 4 files.*EXPLORER_UPLOAD_MAX_FILES"):
        family_from_uploads([("fam.zip", buf.getvalue())])
    monkeypatch.delenv(up.ENV_MAX_FILES)
    monkeypatch.setenv(up.ENV_MAX_BYTES, str(2 * 1024**2))
    big = [(f"b{i}.bin", os.urandom(1024**2)) for i in range(3)]
    with pytest.raises(InputError, match=r"'b2\.bin'.*2 MiB per upload \(EXPLORER_UPLOAD_MAX_BYTES\)"):
        up.upload_dir(big)
    assert _left(cache) == []
    monkeypatch.delenv(up.ENV_MAX_BYTES)
    monkeypatch.setenv(up.ENV_SESSION_BYTES, str(int(1.5 * 1024**2)))
    first = up.upload_dir(big[:1])
    with pytest.raises(InputError, match=r"'b1\.bin'.*per session \(EXPLORER_UPLOAD_SESSION_BYTES\)"):
        up.upload_dir(big[1:2], session_dirs=[first])
    assert _left(cache) == [first.name]
    assert up.upload_dir(big[:1], session_dirs=[first]) == first  # the same upload again is no new usage
    assert up.upload_dir(big[1:2]).is_dir()  # another session (none used yet) may
    monkeypatch.setenv(up.ENV_MAX_FILES, "many")
    with pytest.raises(InputError, match="EXPLORER_UPLOAD_MAX_FILES='many': an upload limit must be a positive"):
        up.upload_dir(big[:1])


@pytest.mark.parametrize("case", ["file_then_folder", "folder_then_file", "repeated", "long_name", "long_folder"])
def test_colliding_and_long_members_refused(cache, case):
    names = {"file_then_folder": ["a", "a/b.safetensors"], "folder_then_file": ["a/b.safetensors", "a"],
             "repeated": ["x.safetensors", "x.safetensors"], "long_name": ["d/" + "n" * 256 + ".safetensors"],
             "long_folder": ["\u00e9" * 128 + "/m.safetensors"]}[case]
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns of the repeated name
        for n in names:
            zf.writestr(n, _st_bytes(0))
    want = "names are at most 255 bytes" if case.startswith("long") else "collides with another member"
    with pytest.raises(InputError, match=want) as err:
        family_from_uploads([("c.zip", buf.getvalue())])
    assert "\n" not in str(err.value) and "c.zip" in str(err.value)
    assert _left(cache) == []
    if case == "repeated":  # two uploaded files of one name
        with pytest.raises(InputError, match="collides"):
            up.upload_dir([("x.bin", b"1"), ("x.bin", b"2")])
    if case == "long_name":
        with pytest.raises(InputError, match="names are at most 255 bytes"):
            up.upload_dir([("n" * 300, b"1")])


def test_refused_and_interrupted_uploads_leave_nothing(cache):
    from explorer.core.errors import ExplorerError

    with pytest.raises(InputError, match="not a readable zip"):
        family_from_uploads([("a.safetensors", _st_bytes(0)), ("x.zip", b"PK\x03\x04broken")])
    assert _left(cache) == []
    with pytest.raises(ExplorerError):  # unpacked, then refused as a family: its folder is removed too
        family_from_uploads([("a.safetensors", b"not safetensors"), ("b.safetensors", _st_bytes(1))], strict=True)
    assert _left(cache) == []
    root = cache / "uploads"
    old, new = root / ".tmp-old", root / ".tmp-new"
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "part.safetensors").write_bytes(b"x" * 100)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    fam = family_from_uploads([("a.safetensors", _st_bytes(0))])
    assert not old.exists() and new.exists()  # stale ones swept; one in progress kept
    assert sorted(_left(cache)) == sorted([".tmp-new", fam.source.rsplit("/", 1)[-1]])


def test_upload_identity_is_content_hash(cache):
    a, b = _st_bytes(0), _st_bytes(1)
    assert len(a) == len(b) and a != b  # a fixed file: same name, same size
    fam = family_from_uploads([("m.safetensors", a)])
    fixed = family_from_uploads([("m.safetensors", io.BytesIO(b))])  # file objects work as well as bytes
    assert fixed.source != fam.source
    g = find_group(build_catalog(fixed), "layers.0")
    want = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(fixed.tensor(fixed.models[0], g.tensor).numpy(), want.numpy())
    assert up.upload_id([("m.safetensors", b)]) == up.upload_id([("m.safetensors", io.BytesIO(b))])


def test_upload_access_is_per_session(cache):
    mine = up.upload_dir([("m.safetensors", _st_bytes(0))])
    theirs = up.upload_dir([("m.safetensors", _st_bytes(1))])
    up.check_upload_access(str(mine), [mine])
    up.check_upload_access(str(mine / "m.safetensors"), [str(mine)])
    up.check_upload_access("zoo:digits-mlp", [])
    with pytest.raises(InputError, match="upload of another session"):
        up.check_upload_access(str(theirs), [mine])
    with pytest.raises(InputError, match="uploads folder itself is not a source"):
        up.check_upload_access(str(cache / "uploads"), [mine, theirs])
    assert up.upload_folder(str(mine / "m.safetensors")) == mine.resolve()
    assert up.upload_folder(str(cache)) is None
