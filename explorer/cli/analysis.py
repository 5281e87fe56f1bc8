"""The analysis commands: ``zoo``, ``inspect``, ``analyze``, ``report``, ``atlas``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from explorer.catalog.groups import build_catalog, describe_family, select_groups
from explorer.catalog.views import VIEWS
from explorer.cli.common import (
    add_cache_args,
    add_cluster_args,
    add_decomposition_args,
    add_family_args,
    load,
    report_skipped,
    run_analysis,
    run_cache,
    scheduler_of,
)
from explorer.core.atomic import atomic_write_bytes
from explorer.core.backend import DEVICES, DTYPES
from explorer.core.errors import OptionError
from explorer.engine.options import CENTERS, SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.outputs.export import basis_safetensors
from explorer.outputs.report import models_table, spectrum_table, write_report
from explorer.pipeline.atlas import run_atlas
from explorer.present.atlas import atlas_table
from explorer.present.curves import coverage_curves
from explorer.zoo import registry


def register(sub, common: argparse.ArgumentParser) -> dict:
    """Add the analysis commands to ``sub``; return {command: handler}."""
    z = sub.add_parser("zoo", parents=[common], help="build or list the built-in model families")
    zsub = z.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    zb = zsub.add_parser("build", parents=[common], help="build/refresh built-in families (default: the default set)")
    zb.add_argument("names", nargs="*", metavar="NAME")
    zb.add_argument("--force", action="store_true", help="rebuild even if up to date")
    zsub.add_parser("list", parents=[common], help="list the built-in families and whether they are built")

    i = sub.add_parser("inspect", parents=[common], help="models, layer groups, shapes, formats of a SOURCE")
    i.add_argument("source", metavar="SOURCE")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_family_args(i)

    a = sub.add_parser("analyze", parents=[common], help="joint spectral decomposition of one layer group")
    a.add_argument("source", metavar="SOURCE")
    a.add_argument("--layer", required=True, metavar="GROUP", help="layer group (see `inspect`)")
    add_decomposition_args(a)
    a.add_argument("--json", dest="json_file", metavar="FILE", help="write the full result as JSON")
    a.add_argument("--out", metavar="DIR", help="also write CSVs and the basis/coordinates as safetensors")
    add_family_args(a)
    add_cache_args(a)
    add_cluster_args(a)

    r = sub.add_parser("report", parents=[common], help="self-contained HTML report + CSV + basis .safetensors")
    r.add_argument("source", metavar="SOURCE")
    r.add_argument("--layer", action="append", metavar="GROUP",
                   help="layer group, repeatable (default: up to 8 groups from the catalog)")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_decomposition_args(r)
    add_family_args(r)
    add_cache_args(r)
    add_cluster_args(r)

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
    add_family_args(at)
    add_cache_args(at)
    add_cluster_args(at)

    return {"zoo": _cmd_zoo, "inspect": _cmd_inspect, "analyze": _cmd_analyze, "report": _cmd_report,
            "atlas": _cmd_atlas}


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
    fam = load(args, progress)
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


def _cmd_analyze(args, progress) -> int:
    fam = load(args, progress)
    res = run_analysis(args, fam, args.layer, progress)
    n_skipped = report_skipped([res], progress)
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
    fam = load(args, progress)
    cat = [g for g in build_catalog(fam) if g.n_models == len(fam)]
    layers = args.layer or [g.name for g in select_groups(cat)][:8]
    if not layers:
        raise OptionError(f"{fam.source}: no layer group is held by every model")
    results = [run_analysis(args, fam, layer, progress) for layer in layers]
    files = write_report(results, args.out, progress=progress)
    n_skipped = report_skipped(results, progress)
    print(f"wrote {files.html} and {len(files.data)} data files for {len(results)} layer groups"
          + (f"; {n_skipped} members skipped (see stderr and the report)" if n_skipped else ""))
    return 0


def _cmd_atlas(args, progress) -> int:
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise OptionError(f"--views {args.views!r}: each must be one of {', '.join(VIEWS)}")
    fam = load(args, progress)
    opts = SpectralOptions(center=args.center, dtype=args.dtype, device=args.device, seed=args.seed)
    cache = run_cache(args, "atlas")
    atlas = run_atlas(fam, args.modules, views, args.k, opts, MetricsOptions(seed=args.seed, null_draws=args.null_draws),
                      progress, cache,
                      strict=args.strict, init_check=not args.no_init_check, scheduler=scheduler_of(args))
    n_skipped = report_skipped([e.analysis for e in atlas.entries], progress)
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
