"""Benchmark of the spectral engine against reference implementations (prints ONE table).

    .venv/bin/python bench/bench_engine.py            # full sizes of issue 4 (~20-30 min, 2 cores)
    .venv/bin/python bench/bench_engine.py --quick    # small sizes, ~1 minute

Each case runs in a fresh subprocess so that its peak memory (``ru_maxrss`` minus the resident
size after imports) is its own; torch allocations are invisible to tracemalloc.  Families are
synthetic, generated from seeds one model at a time (so the engine streams them, as it would
read files), with planted shared directions so that the top-16 basis is well defined:

* ``lora-A`` / ``lora-B``: N LoRA adapters of Mistral-7B rank-16 shape (A 16 x 4096, B 4096 x 16),
  view A (in-mode of the stacked A rows) and view B (out-mode of the stacked B columns);
* ``lora-dW``: their ΔW = s B A, factored engine.  The dense unfolding (4096 x N*4096) is
  64 GiB, so the baselines decompose the equivalent m x sum(r) unfolding [s_i B_i R_i^T]
  (same singular values and left vectors);
* ``full``: 50 dense 1024 x 1024 matrices, out-mode;
* ``model``: model mode, N = 500 models with m*n = 10^6, streamed by row-blocks;
* ``lora-A N=100``: memory against N.

Reference = (b) scipy float64 SVD.  Errors: max relative error over the top-64 singular values,
and the largest principal angle (rad) between the top-16 bases.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = dict(n_lora=500, rank=16, dim=4096, n_full=50, full_dim=1024, n_model=500, model_dim=1000, n_small=100)
QUICK = dict(n_lora=100, rank=16, dim=1024, n_full=10, full_dim=256, n_model=100, model_dim=300, n_small=40)
PLANT = 16  # planted shared directions
MEMORY_LIMIT = 16 << 30  # address-space cap of one case


# ----------------------------------------------------------------------------- families
def _gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def _lora_shared(p: dict):
    import torch

    g = _gen(12345)
    decay = 2.0 ** (-torch.arange(PLANT, dtype=torch.float64) / 2)
    phi_a = decay[:, None] * torch.linalg.qr(torch.randn(p["dim"], PLANT, generator=g, dtype=torch.float64)).Q.T
    phi_b = torch.linalg.qr(torch.randn(p["dim"], PLANT, generator=g, dtype=torch.float64)).Q * decay
    return phi_a, phi_b


def lora_factors(p: dict, n: int):
    """Opener of (B (dim x r), A (r x dim), scale) for n adapters, generated per adapter."""
    import torch

    phi_a, phi_b = _lora_shared(p)
    r, d = p["rank"], p["dim"]

    def opener():
        for i in range(n):
            g = _gen(1000 + i)
            a = torch.randn(r, PLANT, generator=g, dtype=torch.float64) @ phi_a
            a += 0.01 * torch.randn(r, d, generator=g, dtype=torch.float64)
            b = phi_b @ torch.randn(PLANT, r, generator=g, dtype=torch.float64)
            b += 0.01 * torch.randn(d, r, generator=g, dtype=torch.float64)
            yield b, a, 2.0

    return opener


def family(name: str, p: dict):
    """(mode, n_models, shape, opener of dense matrices or factors, row_reader or None)."""
    import torch

    if name in ("lora-A", "lora-A-small"):
        n = p["n_lora"] if name == "lora-A" else p["n_small"]
        op = lora_factors(p, n)
        return "in", n, (p["rank"], p["dim"]), (lambda: (a for _, a, _ in op())), None
    if name == "lora-B":
        op = lora_factors(p, p["n_lora"])
        return "out", p["n_lora"], (p["dim"], p["rank"]), (lambda: (b for b, _, _ in op())), None
    if name == "lora-dW":
        return "out", p["n_lora"], (p["dim"], p["dim"]), lora_factors(p, p["n_lora"]), None
    if name == "full":
        d, n = p["full_dim"], p["n_full"]
        g = _gen(7)
        u = torch.linalg.qr(torch.randn(d, PLANT, generator=g, dtype=torch.float64)).Q
        v = torch.linalg.qr(torch.randn(d, PLANT, generator=g, dtype=torch.float64)).Q
        decay = 2.0 ** (-torch.arange(PLANT, dtype=torch.float64) / 2)

        def opener():
            for i in range(n):
                gi = _gen(2000 + i)
                core = torch.randn(PLANT, PLANT, generator=gi, dtype=torch.float64) * decay
                yield u @ core @ v.T + 0.01 * torch.randn(d, d, generator=gi, dtype=torch.float64)

        return "out", n, (d, d), opener, None
    if name == "model":
        n, d, rank = p["n_model"], p["model_dim"], 64
        g = _gen(9)
        coef = torch.randn(n, rank, generator=g, dtype=torch.float64) * 2.0 ** (-torch.arange(rank) / 16)
        patterns = torch.randn(rank, d * d, generator=g, dtype=torch.float32)  # independent of N

        def rows(r0, r1):
            block = coef @ patterns[:, r0 * d:r1 * d].double()
            return (block[i].view(r1 - r0, d) for i in range(n))

        def opener():
            p64 = patterns.double()
            for i in range(n):
                yield (coef[i] @ p64).view(d, d)

        return "model", n, (d, d), opener, rows
    raise SystemExit(f"unknown family {name}")


def unfolding(name: str, p: dict):
    """The stacked unfolding the baselines decompose (rows = the side the basis lives in)."""
    import torch

    mode, n, shape, opener, rows = family(name, p)
    if name == "lora-dW":
        cols = [s * (b @ torch.linalg.qr(a.T, mode="r").R.T) for b, a, s in opener()]
        return torch.cat(cols, dim=1)
    if mode == "model":
        return _model_stack(rows, n, shape)
    if mode == "out":
        return torch.cat(list(opener()), dim=1)
    return torch.cat([w.T for w in opener()], dim=1)


def _model_stack(rows, n, shape):
    import torch

    x = torch.empty(n, shape[0] * shape[1], dtype=torch.float64)
    for i, piece in enumerate(rows(0, shape[0])):
        x[i] = piece.reshape(-1)
    return x


# ----------------------------------------------------------------------------- one case
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def worker(case: dict) -> dict:
    import torch

    from explorer.engine.dense import GramAccumulator, decompose
    from explorer.engine.factored import decompose_factored
    from explorer.engine.gram import StackedGram
    from explorer.engine.options import SpectralOptions

    p, name, method = case["params"], case["family"], case["method"]
    torch.linalg.eigh(torch.eye(8, dtype=torch.float64))  # load LAPACK before the baseline RSS
    base = _rss_kb()
    out: dict = {}
    if method == "matmul":
        res = {}
        for dt in (torch.float64, torch.float32):
            a = torch.randn(4096, 2048, dtype=dt)
            g = torch.zeros(4096, 4096, dtype=dt)
            best = 1e9
            for _ in range(3):
                t0 = time.perf_counter()
                g.addmm_(a, a.T)
                best = min(best, time.perf_counter() - t0)
            res[str(dt).split(".")[1]] = 2 * 4096 * 4096 * 2048 / best / 1e9
        return {"gflops": res}
    mode, n, shape, opener, rows = family(name, p)
    t0 = time.perf_counter()
    if method == "engine":
        opts = SpectralOptions(mode=mode, k_store=64)
        if name == "lora-dW":
            sp = decompose_factored(opener, n, shape, opts)
        else:
            sp = decompose(opener, n, shape, opts, row_reader=rows)
        sv, basis = sp.singular_values[:64], sp.basis[:, :16]
        out["path"] = sp.method
    elif method == "gram":
        # The accumulation alone, on models already in memory: its flop rate.
        items = list(opener()) if mode != "model" else None
        # The matmul rate under the same machine load, just before the accumulation.
        a = torch.randn(4096, 2048, dtype=torch.float64)
        g = torch.zeros(4096, 4096, dtype=torch.float64)
        best = 1e9
        for _ in range(2):
            t0 = time.perf_counter()
            g.addmm_(a, a.T)
            best = min(best, time.perf_counter() - t0)
        mm_rate = 2 * 4096 * 4096 * 2048 / best / 1e9
        del a, g
        t0 = time.perf_counter()
        if name == "lora-dW":
            acc = StackedGram(shape[0], torch.float64, torch.device("cpu"))
            cols = 0
            for b, a, s in items:
                piece = s * (b @ torch.linalg.qr(a.T, mode="r").R.T)
                acc.add(piece)
                cols += piece.shape[1]
            acc.flush()
            d = shape[0]
        elif mode == "model":
            from explorer.engine.model_gram import model_gram

            model_gram(opener, n, shape, torch.float64, torch.device("cpu"), row_reader=rows)
            d, cols = n, shape[0] * shape[1]
        else:
            acc = GramAccumulator(mode, shape, torch.float64, torch.device("cpu"))
            for w in items:
                acc.add(w)
            acc.gram
            d = shape[0] if mode == "out" else shape[1]
            cols = n * (shape[1] if mode == "out" else shape[0])
        el = time.perf_counter() - t0
        return {"time_s": el, "gflops": 2.0 * d * d * cols / el / 1e9, "matmul": mm_rate}
    else:
        x = unfolding(name, p)
        if method == "torch":
            u, s, _ = torch.linalg.svd(x, full_matrices=False)
            sv, basis = s[:64].numpy(), u[:, :16].numpy()
        elif method == "scipy":
            import scipy.linalg as sl

            xn = x.numpy()
            del x
            u, s, _ = sl.svd(xn, full_matrices=False, lapack_driver="gesdd")
            sv, basis = s[:64], u[:, :16]
        elif method == "tensorly":
            import tensorly as tl
            from tensorly.decomposition import partial_tucker

            xn = x.numpy()
            del x
            # The unfolding as a 2-way tensor: HOSVD of mode 0 (n_iter_max=0: no HOOI sweeps).
            (core, factors), _ = partial_tucker(tl.tensor(xn), rank=[64], modes=[0], n_iter_max=0, init="svd")
            sv = np.sort(np.linalg.norm(core, axis=1))[::-1]
            basis = factors[0][:, :16]
        else:
            raise SystemExit(f"unknown method {method}")
    out["time_s"] = time.perf_counter() - t0
    out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    path = case["npz"]
    np.savez(path, sv=np.asarray(sv, dtype=np.float64), basis=np.asarray(basis, dtype=np.float64))
    return out


def _limit_memory() -> None:
    # A baseline that needs more than this fails with MemoryError instead of waking the OOM killer
    # on a shared 24 GiB machine.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(case: dict, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True,
                              text=True, timeout=timeout, env=env, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return {"error": f"> {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        if "MemoryError" in proc.stderr or "DefaultCPUAllocator" in proc.stderr:
            return {"error": f"out of memory (> {MEMORY_LIMIT >> 30} GiB)"}
        return {"error": "killed" if proc.returncode < 0 else tail[:60]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- table
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (~1 minute)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per case")
    ap.add_argument("--baselines", default="a,b,c",
                    help="which of (a) torch, (b) scipy, (c) tensorly to run (default a,b,c); "
                         "without b, the float64 torch SVD is the reference")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import scipy.linalg as sl

    p = QUICK if args.quick else FULL
    timeout = args.timeout or (120 if args.quick else 900)
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    rate = run_case({"params": p, "family": "", "method": "matmul"}, timeout)["gflops"]
    fams = [("lora-A", f"lora A view, N={p['n_lora']}, in-mode {p['dim']}^2"),
            ("lora-B", f"lora B view, N={p['n_lora']}, out-mode {p['dim']}^2"),
            ("lora-dW", f"lora dW factored, N={p['n_lora']}, out-mode {p['dim']}^2"),
            ("full", f"{p['n_full']} full {p['full_dim']}x{p['full_dim']}, out-mode"),
            ("model", f"model mode N={p['n_model']}, m*n={p['model_dim'] ** 2:.0e}"),
            ("lora-A-small", f"lora A view, N={p['n_small']} (memory vs N)")]
    rows = []
    for fam, label in fams:
        chosen = [m for k, m in (("a", "torch"), ("b", "scipy"), ("c", "tensorly")) if k in args.baselines.split(",")]
        methods = ["engine"] + ([m for m in chosen if m == "torch"] if fam == "lora-A-small" else chosen)
        res = {}
        for meth in methods:
            case = {"params": p, "family": fam, "method": meth, "npz": str(tmp / f"{fam}-{meth}.npz")}
            res[meth] = run_case(case, timeout)
            print(f"  {fam:13s} {meth:9s} {res[meth]}", file=sys.stderr, flush=True)
        gram = run_case({"params": p, "family": fam, "method": "gram"}, timeout)
        ref_path = tmp / f"{fam}-scipy.npz"
        if fam == "lora-A-small" or not ref_path.exists():
            ref_path = tmp / f"{fam}-torch.npz"  # no scipy run: float64 torch SVD is the reference
        ref = np.load(ref_path) if ref_path.exists() else None
        for meth in methods:
            r = res[meth]
            names = {"engine": f"engine ({r.get('path', '?')})", "torch": "(a) torch svd", "scipy": "(b) scipy svd",
                     "tensorly": "(c) tensorly"}
            row = {"family": label, "method": names[meth]}
            if "error" in r:
                row.update(time="-", mem="-", err=r["error"], angle="-", speed="-", gram="")
            else:
                got = np.load(tmp / f"{fam}-{meth}.npz")
                err = ang = float("nan")
                if ref is not None:
                    k = min(len(got["sv"]), len(ref["sv"]))
                    err = float(np.max(np.abs(got["sv"][:k] - ref["sv"][:k]) / ref["sv"][:k]))
                    ang = float(sl.subspace_angles(got["basis"], ref["basis"]).max())
                t_a = res.get("torch", {}).get("time_s")
                row.update(time=f"{r['time_s']:.2f}", mem=f"{r['peak_mb']:.0f}", err=f"{err:.1e}", angle=f"{ang:.1e}",
                           speed=f"{t_a / r['time_s']:.1f}x" if t_a else "-", gram="")
                if meth == "engine" and "gflops" in gram:
                    row["gram"] = (f"{gram['time_s']:.1f} s, {gram['gflops']:.0f} GF/s = "
                                   f"{100 * gram['gflops'] / gram['matmul']:.0f}% of {gram['matmul']:.0f}")
            rows.append(row)
    head = ["family", "method", "time s", "peak MiB", "rel err top-64", "angle top-16", "vs (a)",
            "Gram accumulation alone (2d^2 w flops; % of f64 matmul measured beside it)"]
    keys = ["family", "method", "time", "mem", "err", "angle", "speed", "gram"]
    widths = [max(len(h), *(len(str(r[k])) for r in rows)) for h, k in zip(head, keys)]
    ref_name = "(b) scipy float64 SVD" if "b" in args.baselines.split(",") else "(a) torch float64 SVD"
    print(f"reference for the errors: {ref_name}; 'vs (a)' = time of (a) / time of the method")
    print(f"matmul rate (4096x2048x4096): float64 {rate['float64']:.0f} GFLOP/s, float32 {rate['float32']:.0f} GFLOP/s;"
          f" torch threads {os.cpu_count()} cores; engine in float64")
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))


if __name__ == "__main__":
    main()
