"""Bad members are never dropped silently: skipped and named in every output, or refused with --strict.

The hostile corpus of tests/hostile.py, each case placed as a *member* of a family beside good
models, goes through the real ``python -m explorer analyze`` and ``report``: every member is named
on stderr, in the JSON ``skipped`` list and in the HTML report; ``--strict`` refuses with exit 2 and
one line.  Also: NaN/Inf found while reading (skipped, or refused under strict, on a cache hit too),
a tensor repeated across a model's files, structured entries, and their round trip.
"""
from __future__ import annotations

import html
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from explorer import cli
from explorer.core.errors import InputError
from explorer.pipeline import result_io
from explorer.pipeline.analyze import analyze, analyze_cached
from explorer.pipeline.cache import ResultCache
from explorer.sources.family import Family, ModelRef, Skipped
from explorer.sources.resolve import load_family
from explorer.sources.upload import family_from_uploads
from tests.helpers import write_family
from tests.hostile import LAYER, corpus, member_family

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def members():
    """The member family (3 good models + every member-kind hostile case) in a fresh folder."""
    d = Path(tempfile.mkdtemp(prefix="skipped-members-"))
    fam_dir, cases = member_family(d, corpus(d / "c"))
    yield fam_dir, cases
    shutil.rmtree(d, ignore_errors=True)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "EXPLORER_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _run_all(argvs: list[list[str]], cache: Path) -> list[subprocess.CompletedProcess]:
    def one(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "explorer", "--quiet", *argv], cwd=ROOT, env=_env(cache),
                              capture_output=True, text=True)

    # Two at a time: each process imports torch; more would only queue on a 2-core machine.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, argvs))


def _good(folder: Path, n: int = 3) -> Path:
    g = torch.Generator().manual_seed(0)
    return write_family(folder, {f"good{i}": torch.randn(4, 3, generator=g).numpy() for i in range(n)})


def _nan_member(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = torch.randn(4, 3)
    w[2, 1] = float("nan")
    save_file({"layers.0.weight": w}, str(path))
    return path


def _results(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.sxr")) if cache.exists() else []


# ------------------------------------------------------------------ every hostile member, every output
def test_corpus_members_cover_the_hostile_cases(members):
    _, cases = members
    assert len(cases) >= 35
    for needle in ("truncated", "pickle_code", "adapter_config", "shard_", "nan", "inf", "symlink", "oversized"):
        assert any(needle in cid for cid in cases), needle


def test_analyze_and_report_name_every_skipped_member(members, tmp_path):
    fam_dir, cases = members
    out_json, rep, atlas_json = tmp_path / "res.json", tmp_path / "rep", tmp_path / "atlas.json"
    cache = tmp_path / "cache"
    analyzed, reported, atlased = _run_all([
        ["analyze", str(fam_dir), "--layer", LAYER, "--json", str(out_json), "--cache-dir", str(cache / "results")],
        ["report", str(fam_dir), "--out", str(rep), "--cache-dir", str(cache / "results")],
        ["atlas", str(fam_dir), "--json", str(atlas_json), "--cache-dir", str(cache / "results")],
    ], cache)
    for proc in (analyzed, reported, atlased):
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert all(ln.startswith("skipped: ") for ln in lines), lines
        assert len(lines) == len(cases), (len(lines), len(cases))
        for cid, m in cases.items():
            mine = [ln for ln in lines if ln.startswith(f"skipped: {cid}: ")]
            assert len(mine) == 1, (cid, lines)
            assert m.expect in mine[0] and Path(m.path).name in mine[0], (cid, mine[0])
    assert f"skipped={len(cases)}" in analyzed.stdout
    assert f"{len(cases)} members skipped" in reported.stdout
    assert f"skipped={len(cases)}" in atlased.stdout
    atlas = json.loads(atlas_json.read_text())
    assert atlas["schema"] == "subspace-explorer/atlas/1"
    assert {s["name"] for s in atlas["skipped"]} == set(cases)

    res = json.loads(out_json.read_text())
    assert res["schema"] == "subspace-explorer/analysis/1"
    assert res["models"] == ["good0", "good1", "good2"]
    got = {s["name"]: s for s in res["skipped"]}
    assert set(got) == set(cases) and len(res["skipped"]) == len(cases)
    for cid, m in cases.items():
        assert set(got[cid]) == {"name", "path", "reason"}
        assert got[cid]["path"] == m.path and m.expect in got[cid]["reason"], (cid, got[cid])
    # The members found while reading (NaN/Inf) come last, after those the load left out.
    assert [s["name"] for s in res["skipped"][-2:]] == sorted(c for c, m in cases.items() if m.on_read)

    page = (rep / "report.html").read_text()
    assert f"{len(cases)} members skipped" in page
    for cid, m in cases.items():
        assert f"<td>{html.escape(cid)}</td><td>{html.escape(m.path)}</td>" in page, cid
        assert html.escape(m.expect) in page, cid


def test_strict_refuses_with_exit_2_and_one_line(members, tmp_path):
    fam_dir, cases = members
    cache = tmp_path / "cache"
    first = sorted(c for c, m in cases.items() if not m.on_read)[0]
    procs = _run_all([
        ["inspect", str(fam_dir), "--strict"],
        ["analyze", str(fam_dir), "--layer", LAYER, "--strict", "--cache-dir", str(cache / "results")],
        ["report", str(fam_dir), "--out", str(tmp_path / "rep"), "--strict", "--cache-dir", str(cache / "results")],
        ["inspect", str(fam_dir)],
    ], cache)
    for proc in procs[:3]:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, lines
        assert "refused (strict)" in lines[0] and f"member {first}: " in lines[0], lines[0]
        assert cases[first].expect in lines[0]
    assert not _results(cache) and not (tmp_path / "rep" / "report.html").exists()
    # Without --strict, inspect lists the members it left out (read from headers: not NaN/Inf).
    listing = procs[3]
    assert listing.returncode == 0, listing.stderr
    skipped = [ln.strip() for ln in listing.stdout.splitlines() if ln.strip().startswith("skipped: ")]
    assert len(skipped) == sum(not m.on_read for m in cases.values())


def test_strict_refuses_a_nan_member_found_while_reading(tmp_path):
    fam_dir = _good(tmp_path / "fam")
    _nan_member(fam_dir / "bad.safetensors")
    cache = tmp_path / "cache"
    (proc,) = _run_all([["analyze", str(fam_dir), "--layer", LAYER, "--strict",
                         "--cache-dir", str(cache / "results")]], cache)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "refused (strict): member bad: " in lines[0] and "holds NaN or Inf" in lines[0]
    assert "bad.safetensors" in lines[0]
    assert not _results(cache)


# ----------------------------------------------------------------------------- the library
def test_nan_member_is_skipped_and_strict_refuses_on_a_hit(tmp_path):
    fam_dir = _good(tmp_path / "fam")
    bad = _nan_member(fam_dir / "bad.safetensors")
    cache = ResultCache(tmp_path / "results")
    with pytest.raises(InputError, match=r"refused \(strict\): member bad: .*holds NaN or Inf"):
        analyze_cached(str(fam_dir), LAYER, cache=cache, strict=True)
    assert not _results(tmp_path / "results")
    res = analyze_cached(str(fam_dir), LAYER, cache=cache)
    assert res.models == ["good0", "good1", "good2"] and not res.from_cache
    assert [(s.name, s.path) for s in res.skipped] == [("bad", str(bad))]
    assert "tensor 'layers.0.weight'" in res.skipped[0].reason
    again = analyze_cached(str(fam_dir), LAYER, cache=cache)
    assert again.from_cache and again.skipped == res.skipped  # the entry keeps what only reading showed
    with pytest.raises(InputError, match=r"refused \(strict\): member bad: "):
        analyze_cached(str(fam_dir), LAYER, cache=cache, strict=True)
    # analyze itself (no cache): the same skip, the same refusal.
    fam = load_family(str(fam_dir))
    assert [s.name for s in analyze(fam, LAYER, metrics=None).skipped] == ["bad"]
    with pytest.raises(InputError, match="refused"):
        analyze(fam, LAYER, metrics=None, strict=True)


def test_only_nan_members_leave_no_model(tmp_path):
    _nan_member(tmp_path / "fam" / "a.safetensors")
    _nan_member(tmp_path / "fam" / "b.safetensors")
    with pytest.raises(InputError, match=r"no usable models \(skipped: a: .*NaN or Inf; b: "):
        analyze(load_family(str(tmp_path / "fam")), LAYER, metrics=None)


def test_a_hit_lists_this_familys_own_load_skips(tmp_path):
    """The key covers the models that loaded; the members that failed are the current family's."""
    fam_dir = _good(tmp_path / "fam")
    (fam_dir / "broken.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{not json}")
    cache = ResultCache(tmp_path / "results")
    first = analyze_cached(str(fam_dir), LAYER, cache=cache)
    assert [s.name for s in first.skipped] == ["broken"]
    with pytest.raises(InputError, match=r"refused \(strict\): member broken: .*truncated or not safetensors"):
        load_family(str(fam_dir), strict=True)
    (fam_dir / "broken.safetensors").unlink()
    fixed = analyze_cached(str(fam_dir), LAYER, cache=cache, strict=True)
    assert fixed.from_cache and fixed.cache_key == first.cache_key and fixed.skipped == []


def test_repeated_tensor_across_a_models_files_is_named(tmp_path):
    fam_dir = _good(tmp_path / "fam")
    split = fam_dir / "split"
    split.mkdir()
    save_file({"layers.0.weight": torch.randn(4, 3)}, str(split / "a.safetensors"))
    save_file({"layers.0.weight": torch.randn(4, 3), "layers.1.weight": torch.randn(2, 2)},
              str(split / "b.safetensors"))
    fam = load_family(str(fam_dir))
    assert [m.name for m in fam.models] == ["good0", "good1", "good2"]
    (s,) = fam.skipped
    assert (s.name, s.path) == ("split", str(split))
    assert "tensor 'layers.0.weight' is in two of its files" in s.reason
    assert str(split / "a.safetensors") in s.reason and str(split / "b.safetensors") in s.reason
    with pytest.raises(InputError, match=r"refused \(strict\): member split: .*a\.safetensors and .*b\.safetensors"):
        load_family(str(fam_dir), strict=True)


def test_upload_zip_of_one_folder_of_checkpoints_is_a_family(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(3):
            zf.writestr(f"ckpts/m{i}.safetensors", save({"layers.0.weight": torch.randn(4, 3)}))
        zf.writestr("ckpts/broken.safetensors", b"\x10\0\0\0\0\0\0\0{not json}")
    fam = family_from_uploads([("ckpts.zip", buf.getvalue())])
    assert [m.name for m in fam.models] == ["m0", "m1", "m2"]
    assert [s.name for s in fam.skipped] == ["broken"] and fam.skipped[0].path.endswith("ckpts/broken.safetensors")
    with pytest.raises(InputError, match=r"refused \(strict\): member broken: "):
        family_from_uploads([("ckpts.zip", buf.getvalue())], strict=True)


def test_manifest_repeats_are_structured(tmp_path):
    _good(tmp_path / "a", 2)
    (tmp_path / "dup.json").write_text(json.dumps({"sources": ["a", "a"]}))
    fam = load_family(str(tmp_path / "dup.json"))
    assert [(s.name, s.path) for s in fam.skipped] == [("good0", str(tmp_path / "a" / "good0.safetensors")),
                                                        ("good1", str(tmp_path / "a" / "good1.safetensors"))]
    assert all("repeats the name of a model of an earlier source" in s.reason for s in fam.skipped)
    with pytest.raises(InputError, match=r"refused \(strict\): member good0: .*\(and 1 more bad members\)"):
        load_family(str(tmp_path / "dup.json"), strict=True)


def test_skipped_entries_are_structured_lines():
    s = Skipped("m3", "/data/m3.safetensors", "/data/m3.safetensors: header is\nnot valid JSON")
    assert (s.name, s.path, s.reason) == ("m3", "/data/m3.safetensors", "/data/m3.safetensors: header is not valid JSON")
    assert s == s.line() == "m3: /data/m3.safetensors: header is not valid JSON"  # the path is not repeated
    assert Skipped("a", "hf:org/a", "no weights").line() == "a: no weights [hf:org/a]"
    assert Skipped.from_json(s.to_json()) == s and Skipped.from_json(s.to_json()).path == s.path
    for copy in (pickle.loads(pickle.dumps(s)), json.loads(json.dumps(s.to_json()))):
        assert (copy["name"] if isinstance(copy, dict) else copy.name) == "m3"
    back = pickle.loads(pickle.dumps(s))
    assert isinstance(back, Skipped) and (back.path, back.reason) == (s.path, s.reason)
    # A plain "name: reason" line (older callers) is accepted as an entry of unknown path.
    f = Family("f", "src", [ModelRef("a", ("x.safetensors",))], skipped=["b: it is broken"])
    assert (f.skipped[0].name, f.skipped[0].path, f.skipped[0].reason) == ("b", "", "it is broken")


def test_analysis_carries_skipped_through_result_io(tmp_path):
    fam_dir = _good(tmp_path / "fam")
    _nan_member(fam_dir / "bad.safetensors")
    (fam_dir / "cut.safetensors").write_bytes(b"\x01\x02")
    res = analyze(load_family(str(fam_dir)), LAYER)
    assert [s.name for s in res.skipped] == ["cut", "bad"]
    result_io.save(res, str(tmp_path / "r.sxr"))
    back = result_io.load(str(tmp_path / "r.sxr"))
    assert [(s.name, s.path, s.reason) for s in back.skipped] == [(s.name, s.path, s.reason) for s in res.skipped]
    assert back.to_json()["skipped"] == res.to_json()["skipped"] == [s.to_json() for s in res.skipped]
    np.testing.assert_array_equal(back.spectrum.eigenvalues, res.spectrum.eigenvalues)


def test_inspect_json_lists_structured_skips(tmp_path, capsys):
    fam_dir = _good(tmp_path / "fam")
    (fam_dir / "cut.safetensors").write_bytes(b"\x01\x02")
    assert cli.main(["--quiet", "inspect", str(fam_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_models"] == 3
    (entry,) = info["skipped"]
    assert set(entry) == {"name", "path", "reason"}
    assert (entry["name"], entry["path"]) == ("cut", str(fam_dir / "cut.safetensors"))
    assert "shorter than its 8-byte header" in entry["reason"]
