"""Safe defaults: server mode (allowed roots, no traversal, no Hub downloads), Hub id checks,
no unsafe unpickling anywhere, and the Streamlit server bound to localhost with an upload cap.
"""
from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

import pytest
import torch

from explorer.core.errors import InputError
from explorer.sources import policy as security
from explorer.sources.resolve import load_family
from tests.helpers import write_family

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Server mode with one allowed root ``tmp/allowed`` and a family ``fam`` in it; ``tmp/outside`` beside it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for root in (allowed, outside):
        write_family(root / "fam", {f"m{i}": torch.randn(4, 3).numpy() for i in range(2)})
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("EXPLORER_SERVER_MODE", "1")
    monkeypatch.setenv("EXPLORER_ALLOWED_ROOTS", str(allowed))
    monkeypatch.delenv("EXPLORER_HUB_ALLOW", raising=False)
    return allowed, outside


def test_off_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("EXPLORER_SERVER_MODE", raising=False)
    assert not security.server_mode()
    assert security.allowed_source_kinds() == ("zoo", "local", "hub", "upload")
    write_family(tmp_path / "f", {"a": torch.randn(4, 3).numpy()})
    assert len(load_family(str(tmp_path / "f"))) == 1


def test_allowed_root_works(server):
    allowed, _ = server
    assert len(load_family(str(allowed / "fam"))) == 2
    assert len(load_family(str(allowed / "fam" / "m0.safetensors"))) == 1


@pytest.mark.parametrize("how", ["outside", "dotdot", "symlink_dir", "symlink_member", "manifest", "base_symlink"])
def test_escapes_are_refused(server, how):
    allowed, outside = server
    if how == "outside":
        src = str(outside / "fam")
    elif how == "dotdot":
        src = str(allowed / "fam" / ".." / ".." / "outside" / "fam")
    elif how == "symlink_dir":
        os.symlink(outside / "fam", allowed / "link")
        src = str(allowed / "link")
    elif how == "symlink_member":
        os.symlink(outside / "fam" / "m0.safetensors", allowed / "fam" / "stolen.safetensors")
        fam = load_family(str(allowed / "fam"))
        assert "stolen" not in [m.name for m in fam.models]
        assert any("outside the folders this server allows" in s for s in fam.skipped)
        return
    elif how == "manifest":
        (allowed / "m.yaml").write_text("sources: [../outside/fam]\n")
        src = str(allowed / "m.yaml")
    else:
        os.symlink(outside / "fam" / "m0.safetensors", allowed / "fam" / "base.safetensors")
        src = str(allowed / "fam")
    with pytest.raises(InputError, match="outside the folders this server allows"):
        load_family(src)


def test_no_roots_leaves_uploads_and_zoo_only(server, monkeypatch):
    allowed, _ = server
    monkeypatch.delenv("EXPLORER_ALLOWED_ROOTS")
    assert security.allowed_source_kinds() == ("zoo", "hub", "upload")
    with pytest.raises(InputError, match="outside"):
        load_family(str(allowed / "fam"))
    from explorer.sources.upload import family_from_uploads

    data = (allowed / "fam" / "m0.safetensors").read_bytes()
    fam = family_from_uploads([("a.safetensors", data), ("b.safetensors", data)])
    assert len(fam) == 2  # an upload's own folder under <cache>/uploads is allowed in server mode


def test_uploads_root_is_not_a_source_in_server_mode(server, tmp_path):
    """``?source=<cache>/uploads`` would load every session's uploads as one family: refused."""
    from explorer.sources.upload import upload_dir

    allowed, _ = server
    data = (allowed / "fam" / "m0.safetensors").read_bytes()
    folder = upload_dir([("a.safetensors", data), ("b.safetensors", data)])
    for src in (tmp_path / "cache" / "uploads", tmp_path / "cache" / "uploads" / ".tmp-x",
                tmp_path / "cache" / "uploads" / "sub" / ".."):
        with pytest.raises(InputError, match="the uploads folder itself is not a source") as err:
            load_family(str(src))
        assert "\n" not in str(err.value)
    assert len(load_family(str(folder))) == 2  # its own folder opens


def test_app_opens_only_its_own_session_uploads(server, monkeypatch):
    """In server mode a session opens only the upload folders it made (kept in its session state)."""
    from streamlit.testing.v1 import AppTest

    from explorer.sources.upload import upload_dir
    from ui.source_picker import UPLOADS_KEY

    allowed, _ = server
    data = (allowed / "fam" / "m0.safetensors").read_bytes()
    theirs = upload_dir([("a.safetensors", data), ("b.safetensors", data)])
    uploads = theirs.parent

    def open_link(source: str, mine: list[str] | None = None) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.switch_page("pages/1_Spectrum.py")
        at.query_params.update({"source": source, "layer": "layers.0"})
        if mine is not None:
            at.session_state[UPLOADS_KEY] = mine
        return at.run()

    for source, msg in ((str(uploads), "uploads folder itself is not a source"),
                        (str(theirs), "upload of another session")):
        at = open_link(source)
        assert not at.exception, [e.message for e in at.exception]
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and msg in errors[0], errors
        assert not at.get("plotly_chart")
    at = open_link(str(theirs), mine=[str(theirs)])  # the session that uploaded it
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart")


def test_hub_downloads_refused_in_server_mode(server, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, **kw):
        calls.append((repo_id, kw.get("local_files_only"), kw.get("dry_run")))
        if kw.get("dry_run"):
            raise AssertionError("server mode must not ask the Hub for a listing")
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: (_ for _ in ()).throw(AssertionError("listing")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, so that only server mode keeps it off the Hub
    with pytest.raises(InputError, match="server mode allows no Hub downloads"):
        load_family("hf:some-org/some-lora")
    assert calls and all(local for _, local, _ in calls)  # only ever from the local cache
    with pytest.raises(InputError, match="no Hub listing|matches no repository"):
        load_family("hf:some-org/lora-*")
    # An allow-listed repo may be downloaded (the listing call is made, not refused).
    monkeypatch.setenv("EXPLORER_HUB_ALLOW", "some-org/*")
    calls.clear()
    with pytest.raises((InputError, AssertionError)):
        load_family("hf:some-org/some-lora")
    assert calls and calls[0][2] is True


@pytest.mark.parametrize("bad", ["hf:../x", "hf:org/..", "hf:org/a--b", "hf:-org/a", "hf:org/a.git", "hf:org/a b",
                                 "hf:org/" + "a" * 97, "hf:a/b/c", "hf:org/ok@../../etc", "hf:org/ok@a b",
                                 "hf:org/caf\u00e9"])
def test_malformed_hub_ids_refused_before_any_call(bad, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("Hub called"))
    with pytest.raises(InputError, match="not a valid|not ORG/REPO|revision"):
        load_family(bad)


@pytest.mark.parametrize("good", ["org/name", "Org-1/name_2.v3", "a/b"])
def test_valid_hub_ids_pass(good):
    security.validate_repo_id(good)


def _load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("load", "loads"):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                yield owner.id, node


def test_no_unpickling_without_weights_only():
    """Every torch.load in explorer/ (and the app) passes weights_only=True; nothing else unpickles."""
    files = list((ROOT / "explorer").rglob("*.py")) + [ROOT / "app.py"] + list((ROOT / "ui").glob("*.py")) + list((ROOT / "pages").glob("*.py"))
    n_torch = 0
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for owner, call in _load_calls(tree):
            if owner == "torch":
                n_torch += 1
                kw = {k.arg: k.value for k in call.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{f}:{call.lineno}: torch.load without weights_only=True"
            assert owner not in ("pickle", "dill", "joblib", "cloudpickle"), f"{f}:{call.lineno}: {owner}.load"
        text = f.read_text()
        assert "allow_pickle=True" not in text and "read_pickle" not in text and "yaml.load(" not in text, f
    assert n_torch >= 1  # the torch reader is covered by the scan


def test_streamlit_binds_localhost_with_upload_cap():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert 0 < int(cfg["server"]["maxUploadSize"]) <= 4096
    assert cfg["browser"]["gatherUsageStats"] is False


def test_resolved_paths_cannot_escape_by_prefix(server, tmp_path):
    """``/x/allowed-evil`` is not inside ``/x/allowed`` even though the string starts the same."""
    allowed, _ = server
    write_family(tmp_path / "allowed-evil" / "fam", {"m": torch.randn(4, 3).numpy()})
    with pytest.raises(InputError, match="outside"):
        load_family(str(tmp_path / "allowed-evil" / "fam"))
