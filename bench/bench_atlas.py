"""The atlas of a real family, as a user runs it: ``python -m explorer atlas`` from a cold cache.

    .venv/bin/python bench/bench_atlas.py             # 500 adapters x 4 layers, ~5 min on 2 cores
    .venv/bin/python bench/bench_atlas.py --quick     # 60 adapters x 2 layers, d = 1024, ~1 min
    .venv/bin/python bench/bench_atlas.py --markdown  # also print the README table

A generated family of N PEFT adapters of Mistral-7B shape (rank 16, bf16; ``q_proj`` 4096 x 4096
and ``v_proj`` 1024 x 4096 in each of L layers, a planted shared subspace per module under
noise: ``bench_cluster.make_family``) goes through the CLI's atlas with its defaults (views
A and B, every metric the pages show, the null, the shared-init check), in a fresh process with
a fresh results cache: wall time (what the user waits for, imports and reads included), peak
memory, and each entry's seconds (``explorer.core.timing``).  Then the same command again: every
entry a cache hit, as when the atlas is reopened.  The target of issue 13: 500 adapters x 4
layers x {q_proj, v_proj} x {A, B} under 5 minutes on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_analysis import _table  # noqa: E402  (bench-local modules: one table printer,
from bench_cluster import make_family  # noqa: E402  one multi-layer family generator)

FULL = dict(n=500, layers=4, dim=4096, v_dim=1024, rank=16)
QUICK = dict(n=60, layers=2, dim=1024, v_dim=256, rank=16)
BENCH_DIR = ROOT / "cache" / "bench"
TARGET_S = 300.0


WORKER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from explorer.core import timing
from explorer.pipeline import atlas as atlas_mod
from explorer.cli import main
seconds = []
orig = atlas_mod.analyze_cached
def timed(*a, **kw):
    t = time.perf_counter()
    out = orig(*a, **kw)
    seconds.append([a[1], a[2], time.perf_counter() - t])
    return out
atlas_mod.analyze_cached = timed
with timing.recording() as rec:
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t0, "entries": seconds, "stages": rec.seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_atlas_cli(folder: Path, cache: Path, out_json: Path) -> dict:
    """``python -m explorer atlas FOLDER --json F --cache-dir C`` in a fresh process, timed whole."""
    args = ["atlas", str(folder), "--json", str(out_json), "--cache-dir", str(cache)]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WORKER, *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"atlas failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 adapters x 2 layers, d = 1024")
    ap.add_argument("--markdown", action="store_true", help="also print the README table")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()
    p = QUICK if args.quick else FULL
    folder = make_family(BENCH_DIR / f"atlas-{'quick' if args.quick else 'full'}-n{p['n']}", p["n"], p["layers"],
                         p["dim"], p["v_dim"])
    print(f"family: {p['n']} PEFT adapters x {p['layers']} layers (rank {p['rank']}, q_proj {p['dim']}x{p['dim']}, "
          f"v_proj {p['v_dim']}x{p['dim']}, bf16) in {folder}; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-atlas-") as tmp:
        cold = run_atlas_cli(folder, Path(tmp) / "cache", Path(tmp) / "atlas.json")
        print(f"  cold: {cold['process_s']:.1f} s, {len(cold['entries'])} entries, peak {cold['peak_mb']:.0f} MiB",
              flush=True)
        warm = run_atlas_cli(folder, Path(tmp) / "cache", Path(tmp) / "atlas2.json")
        atlas = json.loads((Path(tmp) / "atlas.json").read_text())
    labels = {(e["layer"], e["view"]): e["verdict"]["label"] for e in atlas["entries"]}
    rows = [[f"{layer} {view}", f"{s:.1f}", labels.get((layer, view), "?")] for layer, view, s in cold["entries"]]
    print()
    _table(["entry", "seconds", "verdict"], rows, args.markdown)
    print()
    verdict = "met" if cold["process_s"] <= TARGET_S else "not met"
    _table(["atlas by the CLI", "seconds", "peak MiB"],
           [[f"cold cache ({len(cold['entries'])} entries; target {TARGET_S:.0f} s: {verdict})",
             f"{cold['process_s']:.1f}", f"{cold['peak_mb']:.0f}"],
            ["every entry from the cache", f"{warm['process_s']:.1f}", f"{warm['peak_mb']:.0f}"]], args.markdown)
    if args.json:
        args.json.write_text(json.dumps({"params": p, "cold": cold, "warm": warm}, indent=2))


if __name__ == "__main__":
    main()
