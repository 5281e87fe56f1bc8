"""Where an analysis's memory goes: resident memory by stage, at N = 100 and N = 500.

    .venv/bin/python bench/bench_memory.py              # views B and A, N = 100 and 500 (~4 min, 2 cores)
    .venv/bin/python bench/bench_memory.py --quick      # N = 20 and 60, d = 1024 (~20 s)
    .venv/bin/python bench/bench_memory.py --views dW --markdown

Issue 12 asks for the peak at N = 500 within 10 % of N = 100.  ``bench_analysis.py`` gives the two
peaks; this says *which stage* holds it and what grows with N.  Each case runs the whole analysis
(:func:`explorer.pipeline.analyze.analyze`, default options, float64) on ``bench_analysis``'s
generated family in a fresh process, while a thread samples the resident set size every 10 ms
and files each sample under the stage then running (:func:`explorer.core.timing.watching`: leaf
stage names, in the order first entered).  Figures are MiB above the resident size after the
imports and the family's headers are read, as in ``bench_analysis``.  RSS counts what the
allocator keeps after a free, so a stage's figure is an upper bound of what it holds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_analysis import BENCH_DIR, FULL, Q_PROJ, QUICK, _table, make_family  # noqa: E402

WORKER = r"""
import json, sys, threading, time
from pathlib import Path
from explorer.core import timing
from explorer.engine.options import SpectralOptions
from explorer.pipeline.analyze import analyze
from explorer.sources.resolve import load_family

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

folder, layer, view = sys.argv[1:4]
family = load_family(folder)
current, peak, order, done = ["(before the first stage)"], {}, [], threading.Event()

def sample():
    while not done.is_set():
        name, r = current[0], rss()
        if name not in peak:
            order.append(name)
        peak[name] = max(peak.get(name, 0.0), r)
        time.sleep(0.01)

base = rss()
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.perf_counter()
with timing.recording(), timing.watching(lambda name: current.__setitem__(0, name)):
    analyze(family, layer, view=view, options=SpectralOptions(dtype="float64", device="cpu"))
seconds = time.perf_counter() - t0
done.set()
sampler.join()
print(json.dumps({"base_mb": base, "seconds": seconds, "stages": [[s, peak[s] - base] for s in order]}))
"""


def run_case(folder: Path, view: str) -> dict:
    """One whole analysis of ``view`` of q_proj in a fresh process, with its memory by stage."""
    proc = subprocess.run([sys.executable, "-c", WORKER, str(folder), Q_PROJ, view], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"memory case {folder.name} {view} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 20 and 60, d = 1024")
    ap.add_argument("--views", default="B,A")
    ap.add_argument("--markdown", action="store_true", help="also print the README table")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()
    p = QUICK if args.quick else FULL
    tag = "quick" if args.quick else "full"
    sizes = (p["n_small"], p["n"])
    folders = {n: make_family(BENCH_DIR / f"family-{tag}-n{n}", n, p) for n in sizes}
    out = {"params": p, "cases": []}
    for view in args.views.split(","):
        runs = {n: run_case(folders[n], view) for n in sizes}
        out["cases"].append({"view": view, "runs": {str(n): r for n, r in runs.items()}})
        names = list(dict.fromkeys(s for n in sizes for s, _ in runs[n]["stages"]))
        by = {n: dict(runs[n]["stages"]) for n in sizes}
        rows = [[s] + [f"{by[n][s]:.0f}" if s in by[n] else "" for n in sizes] for s in names]
        peaks = {n: max(by[n].values()) for n in sizes}
        at = {n: max(by[n], key=by[n].get) for n in sizes}
        rows.append(["**peak**"] + [f"{peaks[n]:.0f} ({at[n]})" for n in sizes])
        print(f"\nview {view} of {Q_PROJ}, float64: MiB above the start, by stage "
              f"(N = {sizes[1]} / N = {sizes[0]}: {peaks[sizes[1]] / peaks[sizes[0]]:.2f}; "
              f"{runs[sizes[1]]['seconds']:.1f} s / {runs[sizes[0]]['seconds']:.1f} s)")
        _table(["stage"] + [f"N = {n}" for n in sizes], rows, args.markdown)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
