"""The command-line contract of DESIGN.md: ``zoo``, ``inspect``, ``analyze``.

Exit codes: 0 all well; 2 bad input or options (one line on stderr naming what is wrong);
1 an internal error.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from .errors import ExplorerError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m explorer",
        description="Subspace Explorer: joint spectral analysis of model families "
        "(the Universal Weight Subspace Hypothesis).",
        epilog="SOURCE is a folder of weight files or zoo:NAME (see `zoo list`).",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    z = sub.add_parser("zoo", help="build or list the built-in model families")
    zsub = z.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    zb = zsub.add_parser("build", help="build/refresh built-in families (default: the default set)")
    zb.add_argument("names", nargs="*", metavar="NAME")
    zb.add_argument("--force", action="store_true", help="rebuild even if up to date")
    zsub.add_parser("list", help="list the built-in families and whether they are built")

    i = sub.add_parser("inspect", help="models, layer groups, shapes, formats of a SOURCE")
    i.add_argument("source", metavar="SOURCE")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")

    a = sub.add_parser("analyze", help="joint spectral decomposition of one layer group")
    a.add_argument("source", metavar="SOURCE")
    a.add_argument("--layer", required=True, metavar="GROUP", help="layer group (see `inspect`)")
    a.add_argument("--view", default="full", choices=["full", "delta", "A", "B", "dW"])
    a.add_argument("--mode", default="out", choices=["out", "in", "model"])
    a.add_argument("--center", nargs="?", const="model", default="none", choices=["none", "model", "vector"],
                   help="centering convention (a bare --center means model)")
    a.add_argument("--k", type=int, default=16, help="components to report (default 16)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    a.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    a.add_argument("--json", dest="json_file", metavar="FILE", help="write the full result as JSON")
    return p


def _cmd_zoo(args, progress) -> int:
    from .zoo import registry

    if args.zoo_command == "list":
        for r in registry.list_recipes():
            state = "built" if registry.is_built(r.name) else "not built"
            default = "" if r.default else " (on demand)"
            print(f"zoo:{r.name:<22} v{r.version}  {state:<9}{default}  {r.description}")
        return 0
    names = args.names or [r.name for r in registry.list_recipes() if r.default]
    for name in names:
        registry.get_recipe(name)  # validate every name before building anything
    for name in names:
        path = registry.build(name, force=args.force, progress=progress)
        print(f"zoo:{name} ready at {path}")
    return 0


def _cmd_inspect(args, progress) -> int:
    from .catalog import build_catalog
    from .sources.resolve import load_family

    fam = load_family(args.source, progress=progress)
    cat = build_catalog(fam)
    if args.json:
        out = {
            "family": fam.name,
            "source": fam.source,
            "n_models": len(fam),
            "models": fam.metadata.astype(str).to_dict("records"),
            "skipped": fam.skipped,
            "layer_groups": [
                {"name": g.name, "tensor": g.tensor, "module_type": g.module_type, "index": g.index,
                 "shape": list(g.shape), "dtype": g.dtype, "n_models": g.n_models}
                for g in cat
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"{fam.name}: {len(fam)} models from {fam.source}")
    for s in fam.skipped:
        print(f"  skipped: {s}")
    print(f"{'layer group':<40} {'shape':>12} {'dtype':>6} {'models':>7}")
    for g in cat:
        print(f"{g.name:<40} {'x'.join(map(str, g.shape)):>12} {g.dtype:>6} {g.n_models:>7}")
    return 0


def _cmd_analyze(args, progress) -> int:
    from .analysis import analyze
    from .errors import OptionError
    from .sources.resolve import load_family
    from .spectral import SpectralOptions

    if args.k < 1:
        raise OptionError(f"--k must be >= 1, got {args.k}")
    opts = SpectralOptions(mode=args.mode, center=args.center, dtype=args.dtype, device=args.device)
    fam = load_family(args.source, progress=progress)
    res = analyze(fam, args.layer, view=args.view, options=opts, progress=progress)
    if args.json_file:
        path = Path(args.json_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(res.to_json(), indent=2))
        tmp.replace(path)
    sp = res.spectrum
    k = min(args.k, len(sp.eigenvalues))
    print(f"{res.family} / {res.group.name} {list(res.group.shape)}  view={res.view} mode={sp.mode} "
          f"center={sp.center}  N={sp.n_models}")
    print("k at " + ", ".join(f"{int(float(t) * 100)}%: {v}" for t, v in res.k_at().items()))
    print(f"{'j':>4} {'sigma_j':>12} {'EVR':>8} {'cum':>8}")
    for j in range(k):
        print(f"{j + 1:>4} {sp.singular_values[j]:>12.5g} {sp.evr[j]:>8.4f} {sp.cumulative[j]:>8.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    from .progress import CliProgress

    args = _parser().parse_args(argv)
    progress = CliProgress(quiet=args.quiet)
    try:
        handler = {"zoo": _cmd_zoo, "inspect": _cmd_inspect, "analyze": _cmd_analyze}[args.command]
        return handler(args, progress)
    except ExplorerError as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
