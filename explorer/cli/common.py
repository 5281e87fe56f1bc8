"""What the CLI's commands share: their common arguments, loading a family, running one analysis
through the cache, and the ``skipped:`` lines on stderr."""
from __future__ import annotations

import argparse
import sys
import tempfile

from explorer.catalog.views import VIEWS
from explorer.cluster.connect import SCHEDULER_ENV, scheduler_address
from explorer.core.backend import DEVICES, DTYPES
from explorer.core.errors import OptionError
from explorer.core.progress import CliProgress
from explorer.engine.options import CENTERS, METHODS, MODES, SpectralOptions
from explorer.metrics.results import MetricsOptions
from explorer.pipeline.analyze import analyze, analyze_cached
from explorer.pipeline.cache import ResultCache
from explorer.pipeline.result import Analysis
from explorer.sources.family import Skipped
from explorer.sources.resolve import load_family


def add_decomposition_args(a: argparse.ArgumentParser, views=VIEWS) -> None:
    """--view, --mode, --center, --k, --device, --dtype, --method, --seed, --null-draws."""
    a.add_argument("--view", default=None, choices=views,
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


def add_family_args(p: argparse.ArgumentParser) -> None:
    """--base, --name-regex, --strict."""
    p.add_argument("--base", metavar="SOURCE", help="base model for the delta view (file, folder or hf:ORG/REPO)")
    p.add_argument("--name-regex", metavar="RE", help="regex with named groups turning model names into labels")
    p.add_argument("--strict", action="store_true",
                   help="refuse the family if a member cannot be used (corrupt file, NaN/Inf data...) "
                   "instead of skipping it and naming it")


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """--cache-dir, --no-cache."""
    p.add_argument("--cache-dir", metavar="DIR",
                   help="results cache folder (default: <cache root>/results; see EXPLORER_CACHE_DIR)")
    p.add_argument("--no-cache", action="store_true", help="compute without reading or writing the cache")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """--scheduler."""
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on the Dask cluster of this scheduler (tcp://host:8786; default: "
                   f"${SCHEDULER_ENV}, else this machine); workers must see the same files")


def scheduler_of(args) -> str | None:
    """The scheduler address of --scheduler, else $EXPLORER_SCHEDULER, else None (run here)."""
    return scheduler_address(getattr(args, "scheduler", None))


def load(args, progress, source: str | None = None):
    """The family of ``args.source`` (or ``source``), with --base, --name-regex and --strict."""
    return load_family(source or args.source, progress=progress, base=getattr(args, "base", None),
                       name_regex=getattr(args, "name_regex", None), strict=getattr(args, "strict", False))


def spectral_options(args) -> SpectralOptions:
    if args.k < 1:
        raise OptionError(f"--k must be >= 1, got {args.k}")
    return SpectralOptions(mode=args.mode, center=args.center, dtype=args.dtype, device=args.device,
                           method=args.method, seed=args.seed)


def cache_of(args) -> ResultCache | None:
    """The results cache the arguments name (None: the default one)."""
    return ResultCache(args.cache_dir) if getattr(args, "cache_dir", None) else None


def run_cache(args, prefix: str) -> ResultCache | None:
    """The cache of a command that runs several analyses: with --no-cache a private one for this run
    only (in a temp folder: the shared cache is neither read nor written, yet the run's own
    analyses are shared among its steps, and an interrupted run resumes within it), else
    :func:`cache_of`."""
    return ResultCache(tempfile.mkdtemp(prefix=f"explorer-{prefix}-")) if args.no_cache else cache_of(args)


def run_analysis(args, fam, layer: str, progress, opts: SpectralOptions | None = None) -> Analysis:
    """One analysis through the disk cache (unless --no-cache), sharing the app's pipeline.

    ``opts`` defaults to :func:`spectral_options` of the arguments (commands whose --k means
    something else pass their own)."""
    opts = opts or spectral_options(args)
    metrics = MetricsOptions(seed=args.seed, null_draws=args.null_draws)
    if args.no_cache:
        return analyze(fam, layer, view=args.view, options=opts, progress=progress, metrics=metrics,
                       strict=args.strict, scheduler=scheduler_of(args))
    return analyze_cached(fam, layer, args.view, opts, metrics, progress=progress, cache=cache_of(args),
                          strict=args.strict, scheduler=scheduler_of(args))


def report_skipped(skipped_lists, progress: CliProgress) -> int:
    """One ``skipped:`` line per member left out (of any of the lists), on stderr; return the count.

    A member with NaN/Inf data in one layer group only is left out of that group's analysis;
    it is listed once, with the first reason found.  ``skipped_lists`` holds Analysis objects or
    lists of :class:`Skipped`.
    """
    seen: dict[str, Skipped] = {}
    for entry in skipped_lists:
        for s in (entry.skipped if isinstance(entry, Analysis) else entry):
            seen.setdefault(s.name, s)
    progress.close()  # the progress bar shares stderr: end it before the lines
    for s in seen.values():
        print(f"skipped: {s.line()}", file=sys.stderr)
    return len(seen)
