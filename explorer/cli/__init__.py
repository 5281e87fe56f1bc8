"""The command-line contract of DESIGN.md: ``zoo``, ``inspect``, ``analyze``, ``report``, ``atlas``,
``compress``, ``project``, ``merge``.

Exit codes: 0 all well; 2 bad input or options (one line on stderr naming what is wrong);
1 an internal error.  Members of a family that cannot be used are skipped and named: ``inspect``
lists them, ``analyze`` and ``report`` print one ``skipped:`` line each on stderr and count them
in their summary; ``--strict`` refuses the family instead (exit 2).

``app`` starts the Streamlit app (``streamlit run app.py`` on 127.0.0.1). Installed with ``pip install .``, the
same commands run as ``subspace-explorer COMMAND`` from any folder (:func:`console_main`).

One module per family of commands, each with a ``register(sub, common)`` that adds its parsers and
returns its handlers: :mod:`~explorer.cli.analysis`, :mod:`~explorer.cli.apply`, :mod:`~explorer.cli.app`;
:mod:`~explorer.cli.common` holds what they share.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from explorer.cli import analysis, app, apply
from explorer.cli.app import app_command, app_script
from explorer.core.errors import ExplorerError
from explorer.core.progress import CliProgress

__all__ = ["app_command", "app_script", "console_main", "main"]


def _parser(prog: str = "python -m explorer") -> tuple[argparse.ArgumentParser, dict]:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Subspace Explorer: joint spectral analysis of model families "
        "(the Universal Weight Subspace Hypothesis).",
        epilog="SOURCE: a folder (safetensors, sharded checkpoints, PEFT adapters, torch state dicts), a weight "
        "file, a family manifest (.yaml/.json), hf:ORG/REPO[@REV][,ORG/REPO...] or hf:ORG/PREFIX*, or zoo:NAME "
        "(see `zoo list`). Exit codes: 0 ok, 2 bad input, 1 internal error.",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # --quiet is accepted after the subcommand too; SUPPRESS keeps it from overriding the global one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    handlers = {}
    for module in (analysis, apply, app):
        handlers.update(module.register(sub, common))
    return p, handlers


def console_main() -> int:
    """The ``subspace-explorer`` console command (``pip install .``): the CLI's subcommands and ``app``."""
    return main(prog="subspace-explorer")


def main(argv: list[str] | None = None, prog: str = "python -m explorer") -> int:
    """Run the CLI; return the exit code."""
    parser, handlers = _parser(prog)
    args = parser.parse_args(argv)
    progress = CliProgress(quiet=args.quiet)
    try:
        return handlers[args.command](args, progress)
    except ExplorerError as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` & co.: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        progress.close()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: say so, with the traceback for the report
        progress.close()
        traceback.print_exc()
        print("internal error (exit 1): please report this with the traceback above", file=sys.stderr)
        return 1
    finally:
        progress.close()
