"""The installable tool: `pip install .` gives the `subspace-explorer` command, which works from any folder
with its cache in the user cache folder; and the cache root's rules (env, checkout, user cache)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from explorer.core import paths

ROOT = Path(__file__).resolve().parents[1]
# What `pip install .` needs from the checkout (the app is shipped as the folder explorer_app/).
SOURCES = ("pyproject.toml", "README.md", "app.py", "explorer", "pages", "ui", ".streamlit")


# --- the cache root -------------------------------------------------------------------------------

def test_cache_root_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_root() == (tmp_path / "c").resolve()
    assert paths.zoo_root() == (tmp_path / "c").resolve() / "zoo"


def test_cache_root_of_a_checkout_is_its_cache_folder(monkeypatch):
    monkeypatch.delenv("EXPLORER_CACHE_DIR", raising=False)
    assert paths.running_from_checkout()
    assert paths.cache_root() == ROOT / "cache"


def test_cache_root_of_an_installed_copy_is_the_user_cache(monkeypatch, tmp_path):
    site_packages = tmp_path / "lib" / "python3.11" / "site-packages"
    (site_packages / "explorer").mkdir(parents=True)
    assert not paths.running_from_checkout(site_packages)
    (tmp_path / "elsewhere" / ".git").mkdir(parents=True)
    assert paths.running_from_checkout(tmp_path / "elsewhere")

    monkeypatch.delenv("EXPLORER_CACHE_DIR", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", site_packages)
    monkeypatch.setattr(paths, "running_from_checkout", lambda root=site_packages: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "xdg" / "subspace-explorer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_root() == tmp_path / "home" / ".cache" / "subspace-explorer"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    assert paths.cache_root() == tmp_path / "home" / ".cache" / "subspace-explorer"


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "explorer").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert config["project"]["scripts"]["subspace-explorer"] == "explorer.cli:console_main"
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace("_", "-")
             for d in config["project"]["dependencies"]}
    assert {"torch", "numpy", "streamlit", "safetensors", "peft"} <= names


# --- the installed command, from another folder ----------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the project `pip install`ed into it (no network: --no-deps --no-build-isolation;
    the pinned dependencies, pip and setuptools come from the test interpreter's site-packages)."""
    assert importlib.util.find_spec("setuptools") is not None, "setuptools is needed to build (torch requires it)"
    work = tmp_path_factory.mktemp("install")
    src = work / "src"  # a copy, so that the build's build/ and *.egg-info stay out of the checkout
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # --system-site-packages sees the base interpreter's packages, not the test venv's: add those by a .pth.
    venv_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    parent_sites = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(venv_site) / "_parent_site.pth").write_text("\n".join(parent_sites) + "\n")
    out = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q", str(src)], capture_output=True, text=True, cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    return venv


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EXPLORER_CACHE_DIR", "PYTHONPATH", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    return env


def test_installed_command_runs_from_another_folder(installed, tmp_path):
    exe = installed / "bin" / "subspace-explorer"
    assert exe.is_file()
    env = _env(tmp_path / "home")
    run = lambda *args: subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=tmp_path, env=env)  # noqa: E731

    out = run("--help")
    assert out.returncode == 0, out.stderr
    assert "subspace-explorer" in out.stdout
    for cmd in ("zoo", "inspect", "analyze", "report", "app"):
        assert cmd in out.stdout

    out = run("zoo", "list")
    assert out.returncode == 0, out.stderr
    assert "zoo:planted" in out.stdout

    out = run("--quiet", "analyze", "zoo:planted", "--layer", "layers.0", "--json", "out.json")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "out.json").read_text())
    user_cache = tmp_path / "home" / ".cache" / "subspace-explorer"
    assert (user_cache / "zoo" / "planted").is_dir(), "the zoo must be built in the user cache folder"
    site_packages = Path(subprocess.run([str(installed / "bin" / "python"), "-c",
                                         "import explorer, pathlib; print(pathlib.Path(explorer.__file__).parents[1])"],
                                        capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip())
    assert installed.resolve() in site_packages.resolve().parents, "explorer must be imported from the installed copy"
    assert not (site_packages / "cache").exists()

    # XDG_CACHE_HOME moves it; EXPLORER_CACHE_DIR overrides both
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out = run("--quiet", "zoo", "build", "planted")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "xdg" / "subspace-explorer" / "zoo" / "planted").is_dir()


def test_installed_app_command(installed, tmp_path):
    exe = installed / "bin" / "subspace-explorer"
    env = _env(tmp_path / "home")
    out = subprocess.run([str(exe), "app", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "--port" in out.stdout
    out = subprocess.run([str(exe), "app", "--dry-run", "--port", "8765"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.split()
    script = Path(cmd[cmd.index("run") + 1])
    assert script.name == "app.py" and installed.resolve() in script.resolve().parents
    app_dir = script.parent
    for page in ("1_Spectrum.py", "2_Overlap.py", "3_Embedding.py", "4_Generalization.py"):
        assert (app_dir / "pages" / page).is_file()  # Streamlit's pages/ folder next to the main script
    assert (app_dir / "ui" / "__init__.py").is_file() and (app_dir / ".streamlit" / "config.toml").is_file()
    for flag, value in (("--server.address", "127.0.0.1"), ("--browser.gatherUsageStats", "false"),
                        ("--server.port", "8765"), ("--server.maxUploadSize", "2048")):
        assert cmd[cmd.index(flag) + 1] == value
    out = subprocess.run([str(exe), "app", "--dry-run", "--port", "0"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 2 and "--port" in out.stderr
