"""The atlas on a Dask cluster: local against 1 and 2 local workers, and the cost of a real family on paper.

    .venv/bin/python bench/bench_cluster.py             # ~10 min on 2 cores
    .venv/bin/python bench/bench_cluster.py --quick     # ~2 min
    .venv/bin/python bench/bench_cluster.py --markdown  # also print the README tables

1. **The atlas, three ways, in one run.** A generated family of N PEFT adapters (bf16, rank 16,
   ``q_proj`` and ``v_proj`` of L layers, a planted shared subspace under noise) is put through
   ``run_atlas`` (views A and B of every group, the default metrics, the shared-init check off)
   here, then on a ``distributed.LocalCluster`` of 1 worker (2 threads) and of 2 workers
   (1 thread each), each into a fresh cache.  Each way runs in a fresh subprocess: wall time
   (cluster start-up timed apart), the client's peak memory, and the largest JSON difference
   from the local atlas.
2. **The per-group cost at the real size.** One layer of the family of ``bench_analysis.py``
   (500 adapters of Mistral-7B shape: ``q_proj`` 4096 x 4096, ``v_proj`` 1024 x 4096; ``--quick``:
   60 adapters, d = 1024), views A (in-mode, d = 4096) and B (out-mode, d = 4096 and 1024),
   analysed here with every stage recorded (:mod:`explorer.core.timing`): read, Gram, eigen,
   pass 2, null.
3. **On paper: 1,000 adapters x 96 groups on W workers.** 32 layers x (q, k, v): 192 atlas
   entries (A and B of each), each costing what step 2 measured for its shape, scaled linearly
   in N to 1,000 for the stages that visit every model (read, Gram sums, pass 2, the null's
   per-model draws) and constant for the rest (eigendecompositions); entries are dealt to W
   workers (each like this 2-core machine) longest first, and the reads are bounded by a shared
   filesystem's bandwidth.  With ``--quick`` the shapes are smaller and the projection is only
   illustrative.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = dict(n=100, layers=3, dim=1024, v_dim=256)
QUICK = dict(n=40, layers=2, dim=512, v_dim=128)
RANK, PLANT = 16, 16
BENCH_DIR = ROOT / "cache" / "bench"
# The paper projection: Mistral-7B has 32 layers; q_proj 4096 x 4096, k_proj and v_proj 1024 x 4096.
TARGET_N, TARGET_LAYERS = 1000, 32
FS_BANDWIDTH = {"1 GB/s (NFS)": 1e9, "10 GB/s (parallel FS)": 1e10}


# ----------------------------------------------------------------------------- the family
def make_family(folder: Path, n: int, layers: int, dim: int, v_dim: int) -> Path:
    """n PEFT adapter folders with q_proj (dim x dim) and v_proj (v_dim x dim) of ``layers`` layers, once."""
    import torch

    from bench_analysis import planted_pair

    from explorer.zoo.peft_layout import write_adapter

    stamp = folder / ".recipe.json"
    recipe = json.dumps({"n": n, "layers": layers, "dim": dim, "v_dim": v_dim, "rank": RANK, "v": 1})
    if stamp.exists() and stamp.read_text() == recipe:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    decay = 2.0 ** (-torch.arange(PLANT, dtype=torch.float64) / 2)
    shapes = {}
    for layer in range(layers):
        shapes[f"model.layers.{layer}.self_attn.q_proj"] = dim
        shapes[f"model.layers.{layer}.self_attn.v_proj"] = v_dim
    shared = {m: (torch.linalg.qr(torch.randn(dim, PLANT, generator=g, dtype=torch.float64)).Q.T,
                  torch.linalg.qr(torch.randn(out, PLANT, generator=g, dtype=torch.float64)).Q)
              for m, out in shapes.items()}
    for i in range(n):
        gi = torch.Generator().manual_seed(1000 + i)
        factors = {}
        for module, (qa, qb) in shared.items():
            factors[module] = planted_pair(gi, qa, qb, RANK, decay)
        write_adapter(folder / f"adapter-{i:04d}", factors, RANK, 32.0)
    stamp.write_text(recipe)
    return folder


# ----------------------------------------------------------------------------- one way (subprocess)
def way(case: dict) -> dict:
    """Run the atlas one way, in this fresh process; print its timings as JSON."""
    import tempfile

    from explorer.pipeline.atlas import run_atlas
    from explorer.pipeline.cache import ResultCache
    from explorer.sources.resolve import load_family

    family = load_family(case["family"])
    out: dict = {"way": case["way"]}
    cluster = None
    scheduler = None
    if case["workers"]:
        from distributed import LocalCluster

        os.environ["PYTHONPATH"] = str(ROOT)
        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=case["workers"], threads_per_worker=case["threads"], processes=True,
                               dashboard_address=None, silence_logs=40)
        scheduler = cluster.scheduler_address
        out["startup_s"] = time.perf_counter() - t0
    cache = ResultCache(tempfile.mkdtemp(prefix="bench-cluster-"))
    t0 = time.perf_counter()
    atlas = run_atlas(family, views=("A", "B"), cache=cache, init_check=False, scheduler=scheduler)
    out["atlas_s"] = time.perf_counter() - t0
    out["entries"] = len(atlas.entries)
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["json"] = atlas.to_json()
    if cluster is not None:
        cluster.close()
    return out


def real_group(case: dict) -> dict:
    """The whole analysis of views A and B of one real-size layer, stages recorded (in this process)."""
    from explorer.core import timing
    from explorer.pipeline.analyze import analyze
    from explorer.sources.resolve import load_family

    family = load_family(case["family"])
    rows = {}
    for layer, view in (("model.layers.0.self_attn.q_proj", "A"), ("model.layers.0.self_attn.q_proj", "B"),
                        ("model.layers.0.self_attn.v_proj", "B")):
        with timing.recording() as rec:
            t0 = time.perf_counter()
            analyze(family, layer, view=view)
            wall = time.perf_counter() - t0
        rows[f"{layer.rsplit('.', 1)[-1]} {view}"] = {"wall_s": wall, "stages": _stages(rec.seconds)}
    return rows


def _stages(seconds: dict) -> dict:
    """Exclusive seconds summed into read / gram / eigen / per-model metrics / the rest."""
    out = {"read": 0.0, "gram": 0.0, "eigen": 0.0, "pass 2": 0.0, "null": 0.0, "other": 0.0}
    for path, s in seconds.items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "read":
            out["read"] += s
        elif leaf == "gram" or "pass 1" in leaf:
            out["gram"] += s
        elif leaf == "eigen" or "bases" in leaf:
            out["eigen"] += s
        elif "pass 2" in path or leaf in ("own subspaces", "leave-one-out"):
            out["pass 2"] += s
        elif "null" in path:
            out["null"] += s
        else:
            out["other"] += s
    return out


def run_sub(kind: str, case: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, f"--{kind}", json.dumps(case)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the projection
def _max_diff(a, b) -> float:
    if isinstance(a, dict):
        return max([_max_diff(a[k], b[k]) for k in a if k != "cache_key"] + [0.0])
    if isinstance(a, list):
        return max([_max_diff(x, y) for x, y in zip(a, b)] + [0.0])
    if isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
        return abs(a - b)
    return 0.0


def projection(real: dict, n_real: int, workers: list[int]) -> list[dict]:
    """Makespan of the 192-entry atlas of 1,000 adapters on W workers, from the measured entries."""
    scale = TARGET_N / n_real

    def cost(row: dict) -> float:
        st = row["stages"]
        per_model = st["read"] + st["gram"] + st["pass 2"] + st["null"]
        return per_model * scale + (row["wall_s"] - per_model)

    a4096, b4096, b1024 = cost(real["q_proj A"]), cost(real["q_proj B"]), cost(real["v_proj B"])
    # Per layer: A of q, k, v (all in-mode on the 4096 input side), B of q (4096) and of k, v (1024).
    entries = sorted([a4096] * 3 * TARGET_LAYERS + [b4096] * TARGET_LAYERS + [b1024] * 2 * TARGET_LAYERS,
                     reverse=True)
    # Bytes read: A (16 x 4096) and B (out x 16) of every adapter, bf16, per entry.
    bytes_total = TARGET_N * TARGET_LAYERS * 2 * RANK * (3 * 4096 + 4096 + 2 * 1024)
    rows = []
    for w in workers:
        loads = [0.0] * w
        for t in entries:  # longest processing time first, onto the least loaded worker
            i = min(range(w), key=loads.__getitem__)
            loads[i] += t
        row = {"workers": w, "makespan_s": max(loads), "speedup": sum(entries) / max(loads)}
        for name, bw in FS_BANDWIDTH.items():
            row[name] = max(max(loads), bytes_total / bw)
        rows.append(row)
    return rows, entries, bytes_total


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--way", help=argparse.SUPPRESS)
    ap.add_argument("--real", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.way:
        print(json.dumps(way(json.loads(args.way))))
        return
    if args.real:
        print(json.dumps(real_group(json.loads(args.real))))
        return
    p = QUICK if args.quick else FULL
    tag = "quick" if args.quick else "full"
    small = make_family(BENCH_DIR / f"cluster-{tag}-n{p['n']}", p["n"], p["layers"], p["dim"], p["v_dim"])
    import bench_analysis  # the real-size family is that bench's (built once, shared)

    rp = bench_analysis.QUICK if args.quick else bench_analysis.FULL
    real = bench_analysis.make_family(BENCH_DIR / f"family-{tag}-n{rp['n']}", rp["n"], rp)
    p = {**p, "n_real": rp["n"], "real_dim": rp["dim"], "real_v": rp["v_dim"]}
    ways = [("here (2 threads)", 0, 0), ("1 worker x 2 threads", 1, 2), ("2 workers x 1 thread", 2, 1)]
    results = [run_sub("way", {"family": str(small), "way": name, "workers": w, "threads": t}) for name, w, t in ways]
    base = results[0]
    print(f"atlas of {p['n']} adapters, {p['layers']} layers x (q_proj {p['dim']}x{p['dim']}, v_proj "
          f"{p['v_dim']}x{p['dim']}), views A and B: {base['entries']} entries")
    head = ["way", "start-up s", "atlas s", "vs here", "client peak MB", "max |JSON diff|"]
    rows = [[r["way"], f"{r.get('startup_s', 0):.1f}", f"{r['atlas_s']:.1f}", f"{r['atlas_s'] / base['atlas_s']:.2f}x",
             f"{r['peak_mb']:.0f}", f"{_max_diff(base['json'], r['json']):.1e}"] for r in results]
    _table(head, rows, args.markdown)
    measured = run_sub("real", {"family": str(real)})
    print(f"\none layer of {p['n_real']} adapters (q_proj {p['real_dim']}x{p['real_dim']}, v_proj "
          f"{p['real_v']}x{p['real_dim']}), the whole analysis here, seconds by stage")
    head = ["entry", "wall", "read", "gram", "eigen", "pass 2", "null", "other"]
    rows = [[name, f"{r['wall_s']:.1f}"] + [f"{r['stages'][k]:.1f}" for k in head[2:]] for name, r in measured.items()]
    _table(head, rows, args.markdown)
    proj, entries, nbytes = projection(measured, p["n_real"], [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 384])
    if args.quick:
        print("\n(--quick: the shapes measured are smaller than Mistral-7B's; the projection is illustrative)")
    print(f"\non paper: {TARGET_N} adapters x {TARGET_LAYERS * 3} groups = {len(entries)} entries, "
          f"{sum(entries) / 60:.0f} min of work on one worker like this machine, longest entry {entries[0]:.0f} s, "
          f"{nbytes / 1e9:.1f} GB read")
    head = ["workers", "makespan", "speedup"] + [f"with {k}" for k in FS_BANDWIDTH]
    rows = [[str(r["workers"]), _dur(r["makespan_s"]), f"{r['speedup']:.1f}x"] + [_dur(r[k]) for k in FS_BANDWIDTH]
            for r in proj]
    _table(head, rows, args.markdown)


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _table(head, rows, markdown) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in [head] + rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


if __name__ == "__main__":
    main()
