"""CUDA against CPU float64 on a 500-adapter family, the whole analysis timed per stage (issue 12).

    .venv/bin/python bench/gpu_check.py              # N = 500 Mistral-7B-shape adapters (est. 4-8 min, H200)
    .venv/bin/python bench/gpu_check.py --quick      # N = 60, dim 1024
    .venv/bin/python bench/gpu_check.py --quick --cpu-dry-run   # no GPU: cpu float32 against cpu float64

On the device machines CUDA torch is in ``python3``: ``set -o pipefail; PYTHONUNBUFFERED=1 python3
bench/gpu_check.py 2>&1 | tee $OUT/gpu_check.log`` keeps every stage line (the tables come last).
The family (PEFT layout, rank 16, q_proj 4096x4096 and v_proj 1024x4096, bf16, a planted shared
16-dim subspace plus noise) is generated into a temp dir (or once into ``--family-dir DIR``).  For
views A, B, dW of q_proj, ``analyze`` runs on (cpu, float64), the reference, and on (cuda, float64)
and (cuda, float32); compared: top-16 singular values (max relative error), top-16 basis (largest
principal angle, rad), and energy_one, k-fold curves and null band medians (max abs error / max abs
of the reference), within 1e-10 (float64) and 1e-4 (float32).  Each analysis is timed per stage
(explorer.core.timing), CUDA synchronised around it, with its peak GPU memory.  Copies: one float32
analysis per view runs under torch.profiler at N and at a smaller M; the Memcpy HtoD/DtoH/DtoD
counts and bytes and the ``.item()`` syncs are printed with their growth per model (reported, not
failed; streaming the inputs is one HtoD per read by design, the rest should not grow with N).

Exit codes: 0 every comparison within tolerance; 1 some out of tolerance; 2 bad arguments;
3 no CUDA device here (one line, nothing run); 4 some case raised (traceback printed, the rest ran).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANK, PLANT, ALPHA, NOISE = 16, 16, 32.0, 0.01
TOL = {"float64": 1e-10, "float32": 1e-4}
VIEWS = ("A", "B", "dW")
Q, V = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"


def say(*a) -> None:
    print(*a, flush=True)


def make_family(folder: Path, n: int, dim: int) -> None:
    """n PEFT adapters: q_proj (dim x dim) and v_proj (dim/4 x dim), rank 16, bf16, planted subspace."""
    import torch

    from explorer.zoo.peft_layout import write_adapter

    g = torch.Generator().manual_seed(12345)
    s = torch.linspace(1.0, 0.4, PLANT, dtype=torch.float64)  # planted strengths: well-separated, mild decay
    orth = lambda d: torch.linalg.qr(torch.randn(d, PLANT, generator=g, dtype=torch.float64)).Q  # noqa: E731
    shared = {Q: (orth(dim).T, orth(dim)), V: (orth(dim).T, orth(dim // 4))}
    for i in range(n):
        gi = torch.Generator().manual_seed(1000 + i)
        factors = {}
        for mod, (pa, pb) in shared.items():
            a = (torch.randn(RANK, PLANT, generator=gi, dtype=torch.float64) * s) @ pa
            a += NOISE * torch.randn(RANK, dim, generator=gi, dtype=torch.float64)
            b = pb @ (s[:, None] * torch.randn(PLANT, RANK, generator=gi, dtype=torch.float64))
            b += NOISE * torch.randn(pb.shape[0], RANK, generator=gi, dtype=torch.float64)
            factors[mod] = (a.to(torch.bfloat16), b.to(torch.bfloat16))
        write_adapter(folder / f"adapter{i:04d}", factors, RANK, ALPHA)


def run_case(family, group, view: str, device: str, dtype: str) -> dict:
    """One whole analysis: arrays to compare, wall time, stage times, peak GPU memory."""
    import torch

    from explorer.core.timing import recording
    from explorer.engine.options import SpectralOptions
    from explorer.pipeline.analyze import analyze

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with recording() as times:
        t0 = time.perf_counter()
        res = analyze(family, group, view=view, options=SpectralOptions(device=device, dtype=dtype))
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    m, sp = res.metrics, res.spectrum
    arrays = {"sv": sp.singular_values[:16], "basis": sp.basis[:, :16],
              "energy_one": m.energy_one if m else None,
              "kfold": m.heldout.kfold if m and m.heldout else None,
              "null_evr_median": m.null.evr_median if m and m.null else None,
              "null_cum_median": m.null.cum_median if m and m.null else None}
    return {"arrays": arrays, "wall": wall, "stages": dict(times.seconds), "calls": dict(times.calls),
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "method": sp.method, "mode": sp.mode, "notes": list(m.notes) if m else []}


def compare(ref: dict, got: dict, tol: float) -> list[tuple[str, float | None, bool]]:
    """(quantity, error, within tol) for each compared array; a missing array fails, n/a passes."""
    import numpy as np
    from scipy.linalg import subspace_angles

    out = []
    for key, r in ref.items():
        g = got.get(key)
        if r is None or g is None:
            out.append((key, None, r is None and g is None))
            continue
        r, g = np.asarray(r, dtype=np.float64), np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            out.append((key, float("inf"), False))
            continue
        if key == "sv":
            err = float(np.max(np.abs(g - r) / np.maximum(np.abs(r), np.finfo(float).tiny)))
        elif key == "basis":
            err = float(np.max(subspace_angles(r, g)))
        else:
            err = float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), np.finfo(float).tiny))
        out.append((key, err, bool(np.isfinite(err) and err <= tol)))
    return out


def print_stages(case: dict) -> None:
    if not case["stages"]:
        say("      (no stages recorded: the pipeline does not call explorer.core.timing.stage yet)")
    for path, sec in case["stages"].items():
        say(f"      {sec:9.3f} s  x{case['calls'][path]:<5d} {path}")


def count_copies(family, group, view: str, device: str) -> dict:
    """One float32 analysis under torch.profiler: Memcpy counts/bytes by direction, item() syncs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from explorer.engine.options import SpectralOptions
    from explorer.pipeline.analyze import analyze

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts, record_shapes=False, with_stack=False) as prof:
        analyze(family, group, view=view, options=SpectralOptions(device=device, dtype="float32"))
        if device == "cuda":
            torch.cuda.synchronize()
    out = {d: [0, 0] for d in ("HtoD", "DtoH", "DtoD")}
    try:
        events = list(prof.profiler.kineto_results.events())
    except Exception:  # noqa: BLE001 - private API: fall back to counts without bytes
        events = []
    for ev in events:
        name = ev.name()
        hit = next((d for d in out if "Memcpy" in name and d in name), None)
        if hit is None:
            continue
        nbytes = re.search(r'"bytes":\s*(\d+)', ev.metadata_json() or "")
        out[hit][0] += 1
        out[hit][1] += int(nbytes.group(1)) if nbytes else int(ev.nbytes() or 0)
    averages = prof.key_averages()
    for row in averages if not events else ():
        hit = next((d for d in out if "Memcpy" in row.key and d in row.key), None)
        if hit:
            out[hit][0] += row.count
    out["item"] = [sum(r.count for r in averages if r.key == "aten::_local_scalar_dense"), 0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="adapters (default 500; 60 with --quick)")
    ap.add_argument("--quick", action="store_true", help="N = 60, dim 1024")
    ap.add_argument("--family-dir", type=Path, help="generate the family here once, and reuse it")
    ap.add_argument("--views", default=",".join(VIEWS), help="comma-separated, of A,B,dW")
    ap.add_argument("--no-profile", action="store_true", help="skip the host<->device copy counts")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no GPU: the same checks with device cpu, float32 against float64")
    args = ap.parse_args()
    views = [v for v in args.views.split(",") if v]
    if not views or any(v not in VIEWS for v in views):
        ap.error(f"--views takes a comma-separated subset of {','.join(VIEWS)}")
    try:
        import torch
    except ImportError as exc:
        say(f"gpu_check: torch cannot be imported ({exc}); nothing to check")
        return 3
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        say(f"gpu_check: no CUDA device here (torch {torch.__version__}, cuda build: {torch.version.cuda or 'none'});"
            " nothing to check")
        return 3
    from explorer.catalog.groups import build_catalog
    from explorer.sources.resolve import load_family

    dev = "cpu" if args.cpu_dry_run else "cuda"
    n = args.n or (60 if args.quick else 500)
    dim = 1024 if args.quick else 4096
    start = time.perf_counter()
    say(f"gpu_check: torch {torch.__version__}, cuda build {torch.version.cuda or 'none'}, "
        f"device {torch.cuda.get_device_name(0) if dev == 'cuda' else 'cpu (dry run)'}, "
        f"{torch.get_num_threads()} CPU threads; views {','.join(views)}")
    tmp = None
    folder = args.family_dir
    if folder is None:
        folder = tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        if not any(folder.glob("*/adapter_config.json")):
            t0 = time.perf_counter()
            make_family(folder, n, dim)
            say(f"family: {n} adapters (dim {dim}) written to {folder} in {time.perf_counter() - t0:.1f} s")
        family = load_family(str(folder))
        n = len(family)
        catalog = build_catalog(family)  # reads the headers once, outside the timed analyses
        group = next((g for g in catalog if g.name.endswith("q_proj") and g.kind == "lora"), None)
        if group is None:
            say(f"gpu_check: {folder} holds no LoRA q_proj group; give an empty --family-dir")
            return 2
        say(f"family: {n} adapters in {folder}; group {group.name} {group.shape}, rank {group.rank}, {group.dtype}")
        return run_all(family, group, views, dev, n, args.no_profile, start)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run_all(family, group, views, dev, n, no_profile, start) -> int:
    from explorer.engine.options import SpectralOptions
    from explorer.metrics.results import MetricsOptions
    from explorer.pipeline.analyze import analyze

    failed = errored = False
    warm = replace(family, models=family.models[: min(8, n)])
    for dt in ("float64", "float32") if dev == "cuda" else ():  # load cuBLAS/cuSOLVER before timing
        try:
            analyze(warm, group.name, view="B", options=SpectralOptions(device=dev, dtype=dt),
                    metrics=MetricsOptions(null_draws=0, loo="off", folds=2))
        except Exception:  # noqa: BLE001 - the timed cases will raise (and be reported) too
            errored = True
            say(f"  warm-up {dev}/{dt}: RAISED\n{traceback.format_exc()}")
    # The dry run: cpu float32 against cpu float64 (the same comparison and reporting code).
    cases = [("cpu", "float64")] + ([(dev, "float64")] if dev == "cuda" else []) + [(dev, "float32")]
    rows, summary = [], []
    for view in views:
        ref = None
        for device, dtype in cases:
            label = f"view {view:2s} {device}/{dtype}" + (" (reference)" if ref is None else "")
            try:
                case = run_case(family, group, view, device, dtype)
            except Exception:  # noqa: BLE001 - report it and go on with the other cases
                errored = True
                say(f"  {label}: RAISED\n{traceback.format_exc()}")
                if ref is None:
                    break
                continue
            peak = f", peak GPU {case['peak_mib']:.0f} MiB" if case["peak_mib"] is not None else ""
            say(f"  {label}: {case['wall']:.2f} s (mode {case['mode']}, solver {case['method']}{peak}); "
                f"[{time.perf_counter() - start:.0f} s so far]")
            print_stages(case)
            summary.append((view, f"{device}/{dtype}", case))
            if ref is None:
                ref = case
                if case["notes"]:
                    say("      notes: " + "; ".join(case["notes"]))
                continue
            for qty, err, ok in compare(ref["arrays"], case["arrays"], TOL[dtype]):
                failed |= not ok
                rows.append((view, f"{device}/{dtype}", qty, err, TOL[dtype], ok, case["wall"], ref["wall"]))
    say("\nCUDA against CPU float64" if dev == "cuda" else "\nDRY RUN: cpu float32 against cpu float64")
    head = f"{'view':4s} | {'case':13s} | {'quantity':15s} | {'error':9s} | {'tol':7s} | {'ok':4s} | time s (ref s)"
    say(head + "\n" + "-" * len(head))
    for view, case, qty, err, tol, ok, wall, rwall in rows:
        e = "n/a" if err is None else f"{err:.2e}"
        say(f"{view:4s} | {case:13s} | {qty:15s} | {e:9s} | {tol:<7.0e} | {'ok' if ok else 'FAIL':4s} | "
            f"{wall:.2f} ({rwall:.2f})")
    say("\nwhole analysis per case (s; stages summed by their first two path components, heaviest first)")
    for view, label, case in summary:
        parts: dict[str, float] = {}
        for path, sec in case["stages"].items():
            key = "/".join(path.split("/")[:2])
            parts[key] = parts.get(key, 0.0) + sec
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:4])
        peak = f"{case['peak_mib']:.0f} MiB GPU" if case["peak_mib"] is not None else "-"
        say(f"{view:4s} | {label:13s} | {case['wall']:7.2f} | peak {peak:>12s} | {top}")
    if not no_profile:
        m = n // 2
        if n * RANK >= group.shape[0] and m * RANK < group.shape[0]:
            m = min(n - 1, group.shape[0] // RANK + 8)  # keep M on the same (Gram, not thin) solver as N
        say(f"\nhost<->device copies, one {dev}/float32 analysis (torch.profiler), N = {n} against M = {m}:")
        say(f"{'view':4s} | {'kind':5s} | {'count N':8s} | {'count M':8s} | {'per model':9s} | {'MiB N':9s}")
        sub = replace(family, models=family.models[:m])
        for view in views:
            try:
                big, small = count_copies(family, group, view, dev), count_copies(sub, group.name, view, dev)
            except Exception:  # noqa: BLE001
                errored = True
                say(f"  view {view}: profiling RAISED\n{traceback.format_exc()}")
                continue
            for kind in ("HtoD", "DtoH", "DtoD", "item"):
                (cn, bn), (cm, _) = big[kind], small[kind]
                slope = (cn - cm) / max(n - m, 1)
                flag = "  <- grows with N" if cn > cm and kind != "HtoD" else ""
                mib = f"{bn / 2**20:9.1f}" if kind != "item" else "-".rjust(9)
                say(f"{view:4s} | {kind:5s} | {cn:8d} | {cm:8d} | {slope:9.2f} | {mib}{flag}")
        say("(HtoD grows with N by design: each model's factors are read on the host and sent once per pass;"
            " DtoH/DtoD growing with N are copies inside per-model loops; item = aten::_local_scalar_dense"
            " calls on any device, each a sync plus a DtoH copy when the tensor is on CUDA)")
    verdict = "FAIL" if failed else "pass"
    say(f"\ngpu_check: {verdict}{' (some case raised)' if errored else ''}; "
        f"{time.perf_counter() - start:.0f} s in all")
    return 4 if errored else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
