"""The commands that use a shared basis: ``compress`` (basis + coefficients, as a bundle or as
PEFT adapters), ``project`` (newcomers placed on a family's cached basis) and ``merge`` (the
subspace rule beside task arithmetic, TIES and the mean)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from explorer.apply.basis import APPLY_VIEWS
from explorer.apply.bundle import write_bundle
from explorer.apply.compress import STORE_DTYPES
from explorer.apply.compress_eval import compressed_accuracy
from explorer.apply.compression import compress_family
from explorer.apply.merge import merge_family
from explorer.apply.merge_eval import merge_accuracy, merge_summary
from explorer.apply.merge_export import write_merged
from explorer.apply.merge_rules import MERGE_METHODS, MergeOptions
from explorer.apply.newcomer import project_newcomers
from explorer.apply.peft_export import write_peft_adapters
from explorer.catalog.views import VIEWS
from explorer.cli.common import add_cache_args, add_family_args, load, report_skipped, run_analysis, run_cache
from explorer.core.atomic import atomic_write_bytes
from explorer.core.backend import DEVICES, DTYPES
from explorer.core.errors import OptionError
from explorer.engine.options import CENTERS, MODES, SpectralOptions
from explorer.zoo.evaluators import evaluator_for

FORMATS = ("bundle", "peft")


def register(sub, common: argparse.ArgumentParser) -> dict:
    """Add ``compress`` and ``project`` to ``sub``; return {command: handler}."""
    c = sub.add_parser("compress", parents=[common],
                       help="keep k shared directions per layer group: basis + coefficients (bundle or PEFT)")
    c.add_argument("source", metavar="SOURCE")
    c.add_argument("--layer", action="append", metavar="GROUP", help="layer group, repeatable")
    c.add_argument("--all", action="store_true", help="every layer group held by every model")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--k", type=int, help="directions kept per (group, view)")
    how.add_argument("--tau", type=float, help="keep k(tau): the fewest directions reaching this cumulative EVR")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder (written whole, atomically)")
    c.add_argument("--format", default="bundle", choices=FORMATS,
                   help="bundle: basis and coefficients (.safetensors) + manifest.json; peft: one reconstructed "
                   "PEFT adapter folder per model (default bundle)")
    c.add_argument("--views", default=None,
                   help=f"views, comma-separated, among {', '.join(APPLY_VIEWS)} (default: A,B for LoRA, full for dense)")
    c.add_argument("--center", nargs="?", const="model", default="none", choices=CENTERS)
    c.add_argument("--store-dtype", default="float32", choices=list(STORE_DTYPES),
                   help="dtype of the bundle's basis and coefficients (default float32)")
    c.add_argument("--device", default="auto", choices=DEVICES)
    c.add_argument("--dtype", default="float64", choices=list(DTYPES), help="accumulation dtype of the fits")
    c.add_argument("--json", dest="json_file", metavar="FILE", help="write the summary (subspace-explorer/compress/1)")
    add_family_args(c)
    add_cache_args(c)

    p = sub.add_parser("project", parents=[common], help="project newcomers onto a family's cached basis")
    p.add_argument("new_source", metavar="NEW_SOURCE", help="the newcomer(s): any SOURCE")
    p.add_argument("--onto", required=True, metavar="SOURCE", help="the family whose basis is used")
    p.add_argument("--layer", required=True, metavar="GROUP")
    p.add_argument("--view", default=None, choices=VIEWS, help="default: dW for LoRA adapters, full for dense")
    p.add_argument("--mode", default=None, choices=MODES, help="default: in for --view A, out otherwise")
    p.add_argument("--center", nargs="?", const="model", default="none", choices=CENTERS)
    p.add_argument("--k", type=int, default=None, help="directions of the captured energy (default k(0.9))")
    p.add_argument("--nearest", type=int, default=5, metavar="N", help="nearest family members listed (default 5)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--dtype", default="float64", choices=list(DTYPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--null-draws", type=int, default=100, metavar="N",
                   help="the family analysis' null draws (as analyze: the same cache entry)")
    p.add_argument("--json", dest="json_file", metavar="FILE", help="write the result (subspace-explorer/project/1)")
    add_family_args(p)
    add_cache_args(p)

    g = sub.add_parser("merge", parents=[common], help="merge chosen models: subspace, task arithmetic, TIES or the mean")
    g.add_argument("source", metavar="SOURCE")
    g.add_argument("--layer", action="append", metavar="GROUP", help="layer group, repeatable (default: every group)")
    g.add_argument("--method", required=True, choices=MERGE_METHODS)
    g.add_argument("--models", default=None, help="models to merge, comma-separated (default: every model)")
    g.add_argument("--k", type=int, default=None, help="subspace rule: directions kept (default k(0.9) per group)")
    g.add_argument("--lam", type=float, default=None,
                   help="scale lambda of task arithmetic (default 0.3) and TIES (default 1)")
    g.add_argument("--density", type=float, default=0.2, help="TIES: share of each task vector kept (default 0.2)")
    g.add_argument("--center", nargs="?", const="model", default="none", choices=CENTERS,
                   help="centring of the subspace rule's basis")
    g.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: merged.safetensors (dense) or a PEFT adapter (LoRA), and merge.json")
    g.add_argument("--json", dest="json_file", metavar="FILE", help="write the summary (subspace-explorer/merge/1)")
    g.add_argument("--device", default="auto", choices=DEVICES)
    g.add_argument("--dtype", default="float64", choices=list(DTYPES))
    add_family_args(g)
    add_cache_args(g)
    return {"compress": _cmd_compress, "project": _cmd_project, "merge": _cmd_merge}


def _fmt(x, f: str) -> str:
    return "-" if x is None or not np.isfinite(x) else format(x, f)


def _cmd_compress(args, progress) -> int:
    if bool(args.layer) == bool(args.all):
        raise OptionError("give --layer GROUP (repeatable) or --all")
    views = [v.strip() for v in args.views.split(",") if v.strip()] if args.views else None
    fam = load(args, progress)
    opts = SpectralOptions(center=args.center, dtype=args.dtype, device=args.device)
    cache = run_cache(args, "compress")
    comp = compress_family(fam, args.layer if not args.all else None, args.k, args.tau, views, opts,
                           args.store_dtype, cache, progress, args.strict)
    if args.format == "peft":
        folders = write_peft_adapters(comp, fam, args.out)
        wrote = f"{len(folders)} PEFT adapter folders under {args.out}"
    else:
        write_bundle(comp, args.out)
        wrote = f"a bundle in {args.out} (basis.safetensors, coefficients.safetensors, manifest.json)"
    doc = comp.to_json()
    doc["accuracy"] = _compressed_accuracy(fam, comp)
    n_skipped = report_skipped([comp.skipped], progress)
    if args.json_file:
        atomic_write_bytes(Path(args.json_file), json.dumps(doc, indent=2, allow_nan=False).encode())
    print(f"{comp.family}: {len(comp.models)} models, {len(comp.entries)} (layer group, view) entries, "
          f"stored as {comp.dtype}" + (f"; skipped={n_skipped} (see stderr)" if n_skipped else ""))
    print(f"{'layer group':<36} {'view':>4} {'mode':>4} {'k':>4} {'bytes before':>13} {'after':>11} {'ratio':>7} "
          f"{'error':>7} {'mean-only':>9}")
    for e in doc["entries"]:
        print(f"{e['layer']:<36} {e['view']:>4} {e['mode']:>4} {e['k']:>4} {e['bytes_before']:>13,} "
              f"{e['bytes_after']:>11,} {_fmt(e['ratio'], '7.2f')} {_fmt(e['error_mean'], '7.4f')} "
              f"{_fmt(e['mean_only_error_mean'], '9.4f')}")
    for u in doc["updates"]:
        print(f"{u['layer']:<36}   dW  update error {_fmt(u['error_mean'], '.4f')}, "
              f"mean update {_fmt(u['mean_only_error_mean'], '.4f')} (relative, mean over adapters)")
    print(f"total {doc['bytes_before']:,} -> {doc['bytes_after']:,} bytes ({_fmt(doc['ratio'], '.2f')}x); wrote {wrote}")
    acc = doc["accuracy"]
    if acc is not None:
        print(f"accuracy from the compressed form: {acc['mean']:.4f} over {len(acc['per_model'])} models (as stored "
              f"{acc['stored_mean']:.4f}; every compressed group given the family's mean layer {acc['mean_only_mean']:.4f})")
    for note in comp.notes:
        print(f"note: {note}")
    return 0


def _cmd_project(args, progress) -> int:
    if args.nearest < 1:
        raise OptionError(f"--nearest must be >= 1, got {args.nearest}")
    fam = load(args, progress, source=args.onto)
    new = load(args, progress, source=args.new_source)
    opts = SpectralOptions(mode=args.mode, center=args.center, dtype=args.dtype, device=args.device, seed=args.seed)
    res = run_analysis(args, fam, args.layer, progress, opts)  # --k is the projection's, not the analysis'
    proj = project_newcomers(new, fam, res, args.k, args.nearest)
    doc = proj.to_json()
    n_skipped = report_skipped([res, proj.skipped], progress)
    if args.json_file:
        atomic_write_bytes(Path(args.json_file), json.dumps(doc, indent=2, allow_nan=False).encode())
    print(f"{len(proj.entries)} newcomer(s) onto {res.family} / {proj.layer} view={proj.view} mode={proj.mode} "
          f"center={proj.center}  k={proj.k}" + (f"  skipped={n_skipped} (see stderr)" if n_skipped else ""))
    print(f"{'model':<32} {'captured':>8} {'held-out pct':>12} {'outlier z':>9}  nearest")
    for e in proj.entries:
        near = ", ".join(f"{n} ({d:.3g})" for n, d in e.nearest[:3])
        flag = " OUTLIER" if e.is_outlier else ""
        print(f"{e.name:<32} {_fmt(e.captured_energy, '8.4f')} {_fmt(e.heldout_percentile, '12.1f')} "
              f"{_fmt(e.outlier, '9.2f')}  {near}{flag}")
    for note in proj.notes:
        print(f"note: {note}")
    return 0


def _cmd_merge(args, progress) -> int:
    fam = load(args, progress)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    spectral = SpectralOptions(center=args.center, dtype=args.dtype, device=args.device)
    cache = run_cache(args, "merge")

    def run(method: str):
        opts = MergeOptions(method=method, k=args.k, lam=args.lam, density=args.density)
        return merge_family(fam, models, args.layer, opts, spectral, cache, args.strict)

    merged = run(args.method)
    # On the zoo, every rule on the same models: the paper's claim and the critics' control side by side.
    others = [run(m) if m != args.method else merged for m in MERGE_METHODS] if _has_accuracy(fam) else [merged]
    table, notes = merge_accuracy(fam.source, others)
    doc = merged.to_json()
    doc["accuracy"] = None if table is None else table.to_dict(orient="records")
    doc["notes"] = list(doc["notes"]) + notes
    write_merged(merged, fam, args.out, doc)
    n_skipped = report_skipped([merged.skipped], progress)
    if args.json_file:
        atomic_write_bytes(Path(args.json_file), json.dumps(doc, indent=2, allow_nan=False).encode())
    print(f"{merged.family}: {len(merged.models)} models merged by {args.method} in {len(merged.groups)} layer "
          f"group(s); wrote {args.out}" + (f"; skipped={n_skipped} (see stderr)" if n_skipped else ""))
    print(f"rule: {merged.options.rule()}")
    for gj in doc["groups"]:
        print(f"  {gj['layer']:<36} {gj['view']:>5}  norm {gj['norm']:.4g}" + (f"  k={gj['k']}" if gj["k"] else ""))
    if table is not None:
        print(f"{'accuracy over ' + str(table['task'].nunique()) + ' tasks':<40} {'mean':>7} {'normalized':>10}")
        for _, r in merge_summary(table).iterrows():
            mark = " <-" if r["model"] == args.method else ""
            print(f"  {r['model']:<38} {r['accuracy']:>7.4f} {r['normalized']:>10.4f}{mark}")
    for note in doc["notes"]:
        print(f"note: {note}")
    return 0


def _has_accuracy(fam) -> bool:
    """Whether the family has an evaluator that scores other weights on every task (the digits zoo)."""
    ev = evaluator_for(fam.source)
    return ev is not None and ev.cross_task


def _compressed_accuracy(fam, comp) -> dict | None:
    """On the zoo: each model's accuracy with every compressed group rebuilt, beside the mean layer's."""
    ev = evaluator_for(fam.source)
    entries = [e for e in comp.entries if ev is not None and e.layer in ev.layers]
    if not entries:
        return None
    got = compressed_accuracy(fam.source, entries, [max(e.k for e in entries)])
    if got is None:
        return None
    curve, mean_only = got
    return {"mean": float(curve["accuracy"].mean()), "stored_mean": float(curve["stored_accuracy"].mean()),
            "mean_only_mean": float(mean_only["accuracy"].mean()),
            "per_model": dict(zip(curve["model"], map(float, curve["accuracy"])))}
