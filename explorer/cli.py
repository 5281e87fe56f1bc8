"""The command-line contract of DESIGN.md: ``zoo``, ``inspect``, ``analyze``, ``report``, ``atlas``.

Exit codes: 0 all well; 2 bad input or options (one line on stderr naming what is wrong);
1 an internal error.  Members of a family that cannot be used are skipped and named: ``inspect``
lists them, ``analyze`` and ``report`` print one ``skipped:`` line each on stderr and count them
in their summary; ``--strict`` refuses the family instead (exit 2).

``app`` starts the Streamlit app (``streamlit run app.py`` on 127.0.0.1). Installed with ``pip install .``, the
same commands run as ``subspace-explorer COMMAND`` from any folder (:func:`console_main`).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path

import numpy as np

from explorer.catalog.groups import build_catalog, describe_family, select_groups
from explorer.catalog.views import VIEWS
from explorer.core.atomic import atomic_write_bytes
from explorer.core.backend import DEVICES, DTYPES
from explorer.core.errors import ExplorerError, OptionError
from explorer.core.paths import REPO_ROOT, running_from_checkout
from explorer.core.progress import CliProgress
from explorer.engine.options import CENTERS, METHODS, MODES, SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.outputs.export import basis_safetensors
from explorer.outputs.report import models_table, spectrum_table, write_report
from explorer.pipeline.analyze import analyze, analyze_cached
from explorer.pipeline.atlas import run_atlas
from explorer.pipeline.cache import ResultCache
from explorer.pipeline.result import Analysis
from explorer.present.atlas import atlas_table
from explorer.present.curves import coverage_curves
from explorer.sources.family import Skipped
from explorer.sources.resolve import load_family
from explorer.zoo import registry


def _parser(prog: str = "python -m explorer") -> argparse.ArgumentParser:
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

    z = sub.add_parser("zoo", parents=[common], help="build or list the built-in model families")
    zsub = z.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    zb = zsub.add_parser("build", parents=[common], help="build/refresh built-in families (default: the default set)")
    zb.add_argument("names", nargs="*", metavar="NAME")
    zb.add_argument("--force", action="store_true", help="rebuild even if up to date")
    zsub.add_parser("list", parents=[common], help="list the built-in families and whether they are built")

    i = sub.add_parser("inspect", parents=[common], help="models, layer groups, shapes, formats of a SOURCE")
    i.add_argument("source", metavar="SOURCE")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _family_args(i)

    a = sub.add_parser("analyze", parents=[common], help="joint spectral decomposition of one layer group")
    a.add_argument("source", metavar="SOURCE")
    a.add_argument("--layer", required=True, metavar="GROUP", help="layer group (see `inspect`)")
    _decomposition_args(a)
    a.add_argument("--json", dest="json_file", metavar="FILE", help="write the full result as JSON")
    a.add_argument("--out", metavar="DIR", help="also write CSVs and the basis/coordinates as safetensors")
    _family_args(a)
    _cache_args(a)

    r = sub.add_parser("report", parents=[common], help="self-contained HTML report + CSV + basis .safetensors")
    r.add_argument("source", metavar="SOURCE")
    r.add_argument("--layer", action="append", metavar="GROUP",
                   help="layer group, repeatable (default: up to 8 groups from the catalog)")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _decomposition_args(r)
    _family_args(r)
    _cache_args(r)

    at = sub.add_parser("atlas", parents=[common], help="every layer group of a family, each with its verdict")
    at.add_argument("source", metavar="SOURCE")
    at.add_argument("--modules", metavar="REGEX", help="regex searched in layer-group names (default: every group)")
    at.add_argument("--views", default="A,B", help="views of LoRA groups, comma-separated (default A,B; dense: full)")
    at.add_argument("--k", type=int, default=None, help="rank of each verdict's top-k statistic (default min(16, d/4))")
    at.add_argument("--center", nargs="?", const="model", default="none", choices=CENTERS)
    at.add_argument("--device", default="auto", choices=DEVICES)
    at.add_argument("--dtype", default="float64", choices=list(DTYPES))
    at.add_argument("--seed", type=int, default=0, help="seed of the null draws and folds")
    at.add_argument("--null-draws", type=int, default=100, metavar="N", help="draws of the Gaussian null (0 skips it)")
    at.add_argument("--json", dest="json_file", metavar="FILE", help="write the atlas (subspace-explorer/atlas/1)")
    at.add_argument("--out", metavar="DIR", help="write atlas.json and atlas.csv")
    at.add_argument("--no-init-check", action="store_true",
                    help="LoRA: skip clustering the adapters by A initialisation (and the verdicts within clusters)")
    _family_args(at)
    _cache_args(at)

    ap = sub.add_parser("app", parents=[common], help="start the Streamlit app (on 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="server port (default: 8501, from the app's config)")
    ap.add_argument("--dry-run", action="store_true", help="print the streamlit command instead of running it")
    return p


def _decomposition_args(a: argparse.ArgumentParser) -> None:
    a.add_argument("--view", default=None, choices=VIEWS,
                   help="default: dW for LoRA adapters, full for dense checkpoints")
    # None: the view's own mode (in for A, out for the others), resolved by the pipeline once the
    # view is known, so that an explicit --mode always wins.
    a.add_argument("--mode", default=None, choices=MODES,
                   help="Gram to decompose: out (output space), in (input space) or model (N x N); "
                   "default: in for --view A, out for every other view")
    a.add_argument("--center", nargs="?", const="model", default="none", choices=CENTERS,
                   help="centering convention (a bare --center means model)")
    a.add_argument("--k", type=int, default=16, help="components to report (default 16)")
    a.add_argument("--device", default="auto", choices=DEVICES)
    a.add_argument("--dtype", default="float64", choices=list(DTYPES))
    a.add_argument("--method", default="auto", choices=METHODS,
                   help="eigen-solver: exact, or randomized subspace iteration (auto: randomized above d = 16384)")
    a.add_argument("--seed", type=int, default=0, help="seed of the randomized solver and of the null draws")
    a.add_argument("--null-draws", type=int, default=100, metavar="N",
                   help="draws of the Gaussian null (default 100, fewer where costly; 0 skips it)")


def _family_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", metavar="SOURCE", help="base model for the delta view (file, folder or hf:ORG/REPO)")
    p.add_argument("--name-regex", metavar="RE", help="regex with named groups turning model names into labels")
    p.add_argument("--strict", action="store_true",
                   help="refuse the family if a member cannot be used (corrupt file, NaN/Inf data...) "
                   "instead of skipping it and naming it")


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help="results cache folder (default: <cache root>/results; see EXPLORER_CACHE_DIR)")
    p.add_argument("--no-cache", action="store_true", help="compute without reading or writing the cache")


def _cmd_zoo(args, progress) -> int:
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
        recipe = registry.get_recipe(name)
        if recipe.expected_seconds and (args.force or not registry.is_built(name)):
            # Say how long before starting: the on-demand families take minutes.
            print(f"building zoo:{name}: about {max(1, round(recipe.expected_seconds / 60))} min on 2 cores",
                  file=sys.stderr, flush=True)
        path = registry.build(name, force=args.force, progress=progress)
        print(f"zoo:{name} ready at {path}")
    return 0


def _cmd_inspect(args, progress) -> int:
    fam = _load(args, progress)
    if args.json:
        print(json.dumps(describe_family(fam), indent=2, default=str))
        return 0
    cat = build_catalog(fam)
    base = f", base {fam.base.source}" if fam.base is not None else ""
    print(f"{fam.name}: {len(fam)} {fam.kind} models from {fam.source}{base}")
    for s in fam.skipped:
        print(f"  skipped: {s.line()}")
    print(f"{'layer group':<44} {'kind':>5} {'shape':>12} {'rank':>5} {'dtype':>6} {'models':>7}")
    for g in cat:
        rank = "" if g.kind != "lora" else (str(g.rank) if g.rank is not None else "mixed")
        print(f"{g.name:<44} {g.kind:>5} {'x'.join(map(str, g.shape)):>12} {rank:>5} {g.dtype:>6} {g.n_models:>7}")
    return 0


def _load(args, progress):
    return load_family(args.source, progress=progress, base=getattr(args, "base", None),
                       name_regex=getattr(args, "name_regex", None), strict=getattr(args, "strict", False))


def _options(args):
    if args.k < 1:
        raise OptionError(f"--k must be >= 1, got {args.k}")
    return SpectralOptions(mode=args.mode, center=args.center, dtype=args.dtype, device=args.device,
                           method=args.method, seed=args.seed)


def _run(args, fam, layer: str, progress):
    """One analysis through the disk cache (unless --no-cache), sharing the app's pipeline."""
    opts = _options(args)
    metrics = MetricsOptions(seed=args.seed, null_draws=args.null_draws)
    if args.no_cache:
        return analyze(fam, layer, view=args.view, options=opts, progress=progress, metrics=metrics,
                       strict=args.strict)
    cache = ResultCache(args.cache_dir) if args.cache_dir else None
    return analyze_cached(fam, layer, args.view, opts, metrics, progress=progress, cache=cache, strict=args.strict)


def _report_skipped(results: list[Analysis], progress: CliProgress) -> int:
    """One ``skipped:`` line per member left out of any of ``results``, on stderr; return the count.

    A member with NaN/Inf data in one layer group only is left out of that group's analysis;
    it is listed once, with the first reason found.
    """
    seen: dict[str, Skipped] = {}
    for res in results:
        for s in res.skipped:
            seen.setdefault(s.name, s)
    progress.close()  # the progress bar shares stderr: end it before the lines
    for s in seen.values():
        print(f"skipped: {s.line()}", file=sys.stderr)
    return len(seen)


def _cmd_analyze(args, progress) -> int:
    fam = _load(args, progress)
    res = _run(args, fam, args.layer, progress)
    n_skipped = _report_skipped([res], progress)
    if args.json_file:
        atomic_write_bytes(Path(args.json_file), json.dumps(res.to_json(), indent=2).encode())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "spectrum.csv", spectrum_table(res).to_csv(index=False).encode())
        atomic_write_bytes(out / "models.csv", models_table(res, res.spectrum.k_at(0.9)).to_csv(index=False).encode())
        atomic_write_bytes(out / "coverage.csv", coverage_curves(res).table().to_csv(index=False).encode())
        atomic_write_bytes(out / "basis.safetensors", basis_safetensors(res))
    sp = res.spectrum
    k = min(args.k, len(sp.eigenvalues))
    print(f"{res.family} / {res.group.name} {list(res.group.shape)}  view={res.view} mode={sp.mode} "
          f"center={sp.center}  N={sp.n_models}" + (f"  skipped={n_skipped} (see stderr)" if n_skipped else ""))
    print("k at " + ", ".join(f"{int(float(t) * 100)}%: {v}" for t, v in res.k_at().items()))
    m = res.metrics
    has_null = m is not None and m.null is not None
    print(f"{'j':>4} {'sigma_j':>12} {'EVR':>8} {'cum':>8}" + (f" {'null cum':>9}" if has_null else ""))
    for j in range(k):
        null = f" {m.null.cum_median[j]:>9.4f}" if has_null and j < len(m.null.cum_median) else ""
        print(f"{j + 1:>4} {sp.singular_values[j]:>12.5g} {sp.evr[j]:>8.4f} {sp.cumulative[j]:>8.4f}{null}")
    if has_null:
        print(f"null cum = the null's median. {m.null.caption}.")
    if res.cache_key:
        print(f"cache key {res.cache_key}{' (from cache)' if res.from_cache else ''}")
    return 0


def _cmd_report(args, progress) -> int:
    fam = _load(args, progress)
    cat = [g for g in build_catalog(fam) if g.n_models == len(fam)]
    layers = args.layer or [g.name for g in select_groups(cat)][:8]
    if not layers:
        raise OptionError(f"{fam.source}: no layer group is held by every model")
    results = [_run(args, fam, layer, progress) for layer in layers]
    files = write_report(results, args.out, progress=progress)
    n_skipped = _report_skipped(results, progress)
    print(f"wrote {files.html} and {len(files.data)} data files for {len(results)} layer groups"
          + (f"; {n_skipped} members skipped (see stderr and the report)" if n_skipped else ""))
    return 0


def _cmd_atlas(args, progress) -> int:
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise OptionError(f"--views {args.views!r}: each must be one of {', '.join(VIEWS)}")
    fam = _load(args, progress)
    opts = SpectralOptions(center=args.center, dtype=args.dtype, device=args.device, seed=args.seed)
    cache = None if args.no_cache else ResultCache(args.cache_dir) if args.cache_dir else None
    if args.no_cache:
        cache = ResultCache(tempfile.mkdtemp(prefix="explorer-atlas-"))  # resumable within this run only
    atlas = run_atlas(fam, args.modules, views, args.k, opts, MetricsOptions(seed=args.seed, null_draws=args.null_draws),
                      progress, cache,
                      strict=args.strict, init_check=not args.no_init_check)
    n_skipped = _report_skipped([e.analysis for e in atlas.entries], progress)
    doc = json.dumps(atlas.to_json(), indent=2, allow_nan=False).encode()
    if args.json_file:
        atomic_write_bytes(Path(args.json_file), doc)
    table = atlas_table(atlas)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "atlas.json", doc)
        atomic_write_bytes(out / "atlas.csv", table.to_csv(index=False).encode())
    print(f"{atlas.family}: {atlas.n_models} models, {len(atlas.entries)} (layer group, view) entries"
          + (f"; skipped={n_skipped} (see stderr)" if n_skipped else ""))
    print(f"{'layer group':<40} {'view':>4} {'k90':>5} {'k':>3} {'top-k':>7} {'null':>7} {'effect':>7} "
          f"{'p(Holm)':>8} {'held/fit':>8}  verdict")
    for _, r in table.iterrows():
        fmt = lambda x, f: "-" if x is None or not np.isfinite(x) else format(x, f)  # noqa: E731
        print(f"{r['layer']:<40} {r['view']:>4} {r['k(0.9)']:>5} {r['k']:>3} {fmt(r['top-k EVR'], '7.4f')} "
              f"{fmt(r['null top-k EVR'], '7.4f')} {fmt(r['effect'], '7.3g')} {fmt(r['p (Holm)'], '8.2g')} "
              f"{fmt(r['held-out / fitted'], '8.2f')}  {r['verdict']}")
    for group, summary in dict.fromkeys((e.group.name, e.init.clusters.describe()) for e in atlas.entries if e.init):
        print(f"{group}: {summary}")
    for e in atlas.entries:
        for c in (e.init.within if e.init else []):
            print(f"  {e.group.name} {e.view} within {c.name} ({len(c.members)}): "
                  + (c.verdict.summary if c.verdict else "too few adapters for a verdict"))
    for note in atlas.notes:
        print(f"note: {note}")
    return 0


def app_script() -> Path:
    """The app's main script: ``app.py`` of the checkout, else the one installed as ``explorer_app``
    (with ``pages/``, ``ui/`` and ``.streamlit/config.toml`` beside it)."""
    if running_from_checkout() and (REPO_ROOT / "app.py").is_file():
        return REPO_ROOT / "app.py"
    import importlib.util

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


def console_main() -> int:
    """The ``subspace-explorer`` console command (``pip install .``): the CLI's subcommands and ``app``."""
    return main(prog="subspace-explorer")


def main(argv: list[str] | None = None, prog: str = "python -m explorer") -> int:
    """Run the CLI; return the exit code."""
    args = _parser(prog).parse_args(argv)
    progress = CliProgress(quiet=args.quiet)
    try:
        handler = {"zoo": _cmd_zoo, "inspect": _cmd_inspect, "analyze": _cmd_analyze,
                   "report": _cmd_report, "atlas": _cmd_atlas, "app": _cmd_app}[args.command]
        return handler(args, progress)
    except ExplorerError as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` & co.: not an error
        import os

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
