"""Compression against lorashare on the same family: bytes, reconstruction error, time, peak memory.

    .venv/bin/python bench/bench_compress.py            # 500 adapters of Mistral-7B shape (~5 min, 2 cores)
    .venv/bin/python bench/bench_compress.py --quick    # 60 adapters, d = 1024 (~30 s)
    .venv/bin/python bench/bench_compress.py --markdown # also print the README table

Both compress the same four groups (A and B of ``q_proj`` and ``v_proj`` of the generated family of
:mod:`bench_analysis`: bf16 PEFT adapters, rank 16) to the same k per group, without centring:

* ours: ``python -m explorer compress FAMILY --all --k K --out DIR --no-cache`` in a fresh process
  (reading, the four fits, the coefficients, the errors and writing the bundle: everything a user
  waits for; timed after the imports, like lorashare), in float64 and float32 fits; bytes are the
  bundle's (float32), errors its own report;
* lorashare (``SHAREModel.from_adapters(dirs, num_components=K)``, float32, in its own venv): its
  time in-process, its compressed parameters x 4 bytes, and its per-factor relative errors from
  ``reconstruction_error`` averaged over the adapters (the same definition as ours:
  ||W - W^||_F / ||W||_F of each factor).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_analysis import BENCH_DIR, FULL, QUICK, adapter_dirs, lorashare_python, make_family  # noqa: E402

# Timed after the imports, as lorashare's in-process time is (the process time is kept beside it).
OURS_RUN = r"""
import json, resource, sys, time
from explorer.cli import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

LORASHARE_RUN = r"""
import json, resource, sys, time
from lorashare import SHAREModel
from lorashare.io import load_peft_adapter
k, dirs = int(sys.argv[1]), sys.argv[2:]
t0 = time.perf_counter()
share = SHAREModel.from_adapters(dirs, num_components=k, device="cpu")
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
stats = share.config.compression_stats
errors = []
for name, d in zip(share.adapter_names, dirs):
    weights = load_peft_adapter(d)[0]
    errors.append(share.reconstruction_error(name, original_weights=weights)["mean"])
print(json.dumps({"seconds": seconds, "peak_mb": peak, "params": stats["compressed_total_params"],
                  "original_params": stats["original_total_params"], "error_mean": sum(errors) / len(errors)}))
"""


def run_ours(family: Path, k: int, dtype: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out, js = Path(tmp) / "bundle", Path(tmp) / "c.json"
        argv = ["compress", str(family), "--all", "--k", str(k), "--out", str(out), "--json", str(js),
                "--no-cache", "--quiet", "--dtype", dtype]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", OURS_RUN, *argv], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"compress failed:\n{proc.stderr[-3000:]}")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        doc = json.loads(js.read_text())
        files = sum(p.stat().st_size for p in out.iterdir())
    entries = doc["entries"]
    return {"seconds": run["seconds"], "process_s": wall, "peak_mb": run["peak_mb"],
            "bytes_before": doc["bytes_before"], "bytes_after": doc["bytes_after"], "files_bytes": files,
            "error_mean": sum(e["error_mean"] for e in entries) / len(entries),
            "update_error_mean": sum(u["error_mean"] for u in doc["updates"]) / max(1, len(doc["updates"]))}


def run_lorashare(family: Path, k: int) -> dict:
    py = lorashare_python()
    dirs = [str(p) for p in adapter_dirs(family)]
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), "-c", LORASHARE_RUN, str(k), *dirs], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lorashare failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(process_s=wall, bytes_after=out["params"] * 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--k", type=int, default=32, help="components per group (default 32, lorashare's default)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    p = QUICK if args.quick else FULL
    family = make_family(BENCH_DIR / f"family-{'quick' if args.quick else 'full'}-n{p['n']}", p["n"], p)
    print(f"family: {p['n']} adapters, rank {p['rank']}, q_proj {p['dim']}x{p['dim']}, v_proj {p['v_dim']}x{p['dim']}, "
          f"k = {args.k}", flush=True)
    res = {"params": p, "k": args.k}
    for dtype in ("float64", "float32"):
        res[f"ours_{dtype}"] = r = run_ours(family, args.k, dtype)
        print(f"  ours ({dtype} fits): {r['seconds']:.1f} s, peak {r['peak_mb']:.0f} MiB, {r['bytes_before']:,} -> "
              f"{r['bytes_after']:,} bytes, mean factor error {r['error_mean']:.4f}", flush=True)
    res["lorashare"] = ls = run_lorashare(family, args.k)
    print(f"  lorashare: {ls['seconds']:.1f} s, peak {ls['peak_mb']:.0f} MiB, {ls['bytes_after']:,} bytes, "
          f"mean factor error {ls['error_mean']:.4f}", flush=True)
    if args.markdown:
        print("\n| compress, A + B of q_proj and v_proj, k = %d | seconds | lorashare's / ours | peak MiB | bytes after "
              "| mean factor error |" % args.k)
        print("|---|---|---|---|---|---|")
        for name, key in (("ours, float64 fits", "ours_float64"), ("ours, float32 fits", "ours_float32")):
            r = res[key]
            print(f"| {name} | {r['seconds']:.1f} | {ls['seconds'] / r['seconds']:.2f}x | {r['peak_mb']:.0f} | "
                  f"{r['bytes_after']:,} | {r['error_mean']:.4f} |")
        print(f"| lorashare 0.1.3 (float32, in-process) | {ls['seconds']:.1f} | 1.00x | {ls['peak_mb']:.0f} | "
              f"{ls['bytes_after']:,} | {ls['error_mean']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
