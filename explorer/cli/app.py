"""``app``: start the Streamlit app (``streamlit run app.py`` on 127.0.0.1), from a checkout or an
installed copy (``explorer_app/``)."""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from explorer.core.errors import ExplorerError, OptionError
from explorer.core.paths import REPO_ROOT, running_from_checkout


def register(sub, common: argparse.ArgumentParser) -> dict:
    """Add ``app`` to ``sub``; return {command: handler}."""
    ap = sub.add_parser("app", parents=[common], help="start the Streamlit app (on 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="server port (default: 8501, from the app's config)")
    ap.add_argument("--dry-run", action="store_true", help="print the streamlit command instead of running it")
    return {"app": _cmd_app}


def app_script() -> Path:
    """The app's main script: ``app.py`` of the checkout, else the one installed as ``explorer_app``
    (with ``pages/``, ``ui/`` and ``.streamlit/config.toml`` beside it)."""
    if running_from_checkout() and (REPO_ROOT / "app.py").is_file():
        return REPO_ROOT / "app.py"
    spec = importlib.util.find_spec("explorer_app")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "app.py").is_file():
            return Path(folder) / "app.py"
    raise ExplorerError("the app's files (app.py, pages/, ui/) are not installed beside the explorer package")


def _config_options(config: Path) -> dict[str, str]:
    """The app's ``.streamlit/config.toml`` as ``{"section.key": value}`` for ``streamlit run`` flags, so that it
    applies from any folder (Streamlit itself reads only the config of the current and the home folder)."""
    if not config.is_file():
        return {}
    options = {}
    for section, values in tomllib.loads(config.read_text(encoding="utf-8")).items():
        for key, value in values.items():
            options[f"{section}.{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return options


def app_command(port: int | None = None) -> list[str]:
    """The ``streamlit run`` command line that ``app`` runs."""
    script = app_script()
    options = _config_options(script.parent / ".streamlit" / "config.toml")
    options.update({"server.address": "127.0.0.1", "browser.gatherUsageStats": "false"})
    if port is not None:
        if not 0 < port < 65536:
            raise OptionError(f"--port {port}: not a TCP port (1..65535)")
        options["server.port"] = str(port)
    cmd = [sys.executable, "-m", "streamlit", "run", str(script)]
    for name, value in options.items():
        cmd += [f"--{name}", value]
    return cmd


def _cmd_app(args, progress) -> int:
    cmd = app_command(args.port)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    progress.close()
    return subprocess.call(cmd)
