"""The whole analysis users wait for, per stage, against the decomposition alone and lorashare.

    .venv/bin/python bench/bench_analysis.py            # N = 500 and 100, Mistral-7B shape (~10 min, 2 cores)
    .venv/bin/python bench/bench_analysis.py --quick    # N = 60 and 20, d = 1024 (~1 minute)
    .venv/bin/python bench/bench_analysis.py --markdown # also print the README table

What is timed is :func:`explorer.pipeline.analyze.analyze` exactly as ``subspace-explorer analyze``
and the app's pages run it: the decomposition and every metric the pages show (null band, MP edge,
k-fold held-out and, where ``loo=auto`` runs it, leave-one-out, mean-only, coordinates, own
subspaces and overlaps), with the default options, on a generated family of N PEFT adapter
folders (bf16 safetensors, rank 16, ``q_proj`` 4096 x 4096 and ``v_proj`` 1024 x 4096 of one
Mistral-7B layer: a planted shared subspace under a noise bulk).  Each case runs in a fresh
subprocess, so its peak memory (``ru_maxrss`` above the resident size after imports) is its own;
stages come from :mod:`explorer.core.timing` (exclusive seconds, summed by stage).

Peers, in the same run: the decomposition alone (``metrics=None``) of every case, and
``lorashare`` (SHARE compression: eigh of each stacked factor side, float32), installed by this
script into its own venv (``cache/bench/lorashare-venv``; never into requirements.txt), timed
in-process on the same adapter folders (A and B of q_proj and v_proj: the same four groups our
A and B views analyse).  Accuracy: top-16 singular values against a numpy float64 reference
built independently from the files.  The app: the Spectrum page of the 500-adapter group opened
by its share link in Debian's Chromium on a fresh server, cold and then from the cache (a fresh
browser context: the browser's start-up and plotly.js included), then one widget changed in that
open page (the whole script rerun on cached results).  Contention: the B analysis again while another CPU-bound
job (a 2-thread float64 matmul loop) runs, against the 2x a fair share of the cores explains.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = dict(n=500, n_small=100, dim=4096, v_dim=1024, rank=16)
QUICK = dict(n=60, n_small=20, dim=1024, v_dim=256, rank=16)
Q_PROJ = "model.layers.0.self_attn.q_proj"
V_PROJ = "model.layers.0.self_attn.v_proj"
PLANT = 16
LORASHARE = "lorashare==0.1.3"
TORCH_PIN = "torch==2.13.0"
BENCH_DIR = ROOT / "cache" / "bench"


# ----------------------------------------------------------------------------- the family
def make_family(folder: Path, n: int, p: dict) -> Path:
    """Write n PEFT adapter folders (bf16) once; reused while the recipe stamp matches."""
    import torch

    from explorer.zoo.peft_layout import write_adapter

    stamp = folder / ".recipe.json"
    recipe = json.dumps({"n": n, **p, "plant": PLANT, "v": 1}, sort_keys=True)
    if stamp.exists() and stamp.read_text() == recipe:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    d, dv, r = p["dim"], p["v_dim"], p["rank"]
    g = torch.Generator().manual_seed(12345)
    decay = 2.0 ** (-torch.arange(PLANT, dtype=torch.float64) / 2)
    qa = torch.linalg.qr(torch.randn(d, PLANT, generator=g, dtype=torch.float64)).Q.T
    outs = {Q_PROJ: torch.linalg.qr(torch.randn(d, PLANT, generator=g, dtype=torch.float64)).Q,
            V_PROJ: torch.linalg.qr(torch.randn(dv, PLANT, generator=g, dtype=torch.float64)).Q}
    for i in range(n):
        gi = torch.Generator().manual_seed(1000 + i)
        factors = {}
        for module, out in outs.items():
            factors[module] = planted_pair(gi, qa, out, r, decay)
        write_adapter(folder / f"adapter-{i:04d}", factors, r, 32.0)
    stamp.write_text(recipe)
    return folder


def planted_pair(gi, qa, out, r: int, decay):
    """One adapter's (A, B), bf16: A a Kaiming-like init plus a small part in the shared input
    directions ``qa`` (PLANT x d); B the shared output directions ``out`` (m x PLANT) plus noise."""
    import torch

    d = qa.shape[1]
    a = torch.randn(r, d, generator=gi, dtype=torch.float64) / d**0.5
    a += 0.05 * (torch.randn(r, PLANT, generator=gi, dtype=torch.float64) * decay) @ qa
    b = 0.01 * out @ (torch.randn(PLANT, r, generator=gi, dtype=torch.float64) * decay[:, None])
    b += 0.002 * torch.randn(out.shape[0], r, generator=gi, dtype=torch.float64)
    return a.to(torch.bfloat16), b.to(torch.bfloat16)


def adapter_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


# ----------------------------------------------------------------------------- one case
def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker(case: dict) -> dict:
    """Run one analysis (in this fresh process): decomposition alone, then the whole analysis."""
    from explorer.core import timing
    from explorer.engine.options import SpectralOptions
    from explorer.pipeline.analyze import analyze
    from explorer.sources.resolve import load_family

    family = load_family(case["family"])
    opts = SpectralOptions(dtype=case["dtype"], device="cpu")
    base = _rss_kb()
    out: dict = {}
    if case.get("decomposition", True):
        t0 = time.perf_counter()
        sp = analyze(family, case["layer"], view=case["view"], options=opts, metrics=None).spectrum
        out["decomposition_s"] = time.perf_counter() - t0
    with timing.recording() as rec:
        t0 = time.perf_counter()
        res = analyze(family, case["layer"], view=case["view"], options=opts)
        out["whole_s"] = time.perf_counter() - t0
    out["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    sp = res.spectrum
    out["stages"] = rec.seconds
    out["top16_sv"] = sp.singular_values[:16].tolist()
    out["mode"], out["method"], out["notes"] = sp.mode, sp.method, list(res.metrics.notes)
    out["loo"] = res.metrics.heldout is not None and res.metrics.heldout.loo is not None
    return out


def run_case(case: dict, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- references
def reference_sv(folder: Path, layer: str, view: str, k: int = 16):
    """Top-k singular values of the view's unfolding, numpy float64, from the files directly."""
    import numpy as np
    from safetensors.torch import load_file as load_torch

    cols = []
    for p in adapter_dirs(folder):
        t = load_torch(str(p / "adapter_model.safetensors"))
        cfg = json.loads((p / "adapter_config.json").read_text())
        a = t[f"base_model.model.{layer}.lora_A.weight"].double().numpy()
        b = t[f"base_model.model.{layer}.lora_B.weight"].double().numpy()
        s = cfg["lora_alpha"] / cfg["r"]
        if view == "A":
            cols.append(a.T)
        elif view == "B":
            cols.append(b)
        else:  # dW = s B A: same left singular values as s B chol(A A^T)
            cols.append(s * b @ np.linalg.cholesky(a @ a.T))
    y = np.concatenate(cols, axis=1)
    gram = y @ y.T if y.shape[0] <= y.shape[1] else y.T @ y
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1][:k], 0, None))


# ----------------------------------------------------------------------------- lorashare
LORASHARE_RUN = r"""
import json, resource, sys, time
from lorashare import SHAREModel
dirs = sys.argv[1:]
t0 = time.perf_counter()
share = SHAREModel.from_adapters(dirs, num_components=32, device="cpu")
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def lorashare_python() -> Path:
    """The venv with lorashare (installed on first use, torch pinned to the CPU wheel)."""
    venv = BENCH_DIR / "lorashare-venv"
    py = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH_PIN, LORASHARE],
                       check=True)
        stamp.write_text(LORASHARE)
    return py


def run_lorashare(folder: Path) -> dict:
    py = lorashare_python()
    dirs = [str(p) for p in adapter_dirs(folder)]
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), "-c", LORASHARE_RUN, *dirs], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lorashare failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


# ----------------------------------------------------------------------------- contention
BUSY = "import torch\na=torch.randn(2048,2048,dtype=torch.float64)\nwhile True: a@a"


def contended(case: dict) -> dict:
    """The case again while a competing CPU-bound job (2-thread matmul loop) runs."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(2.0)
        return run_case({**case, "decomposition": False})
    finally:
        busy.kill()
        busy.wait()


# ----------------------------------------------------------------------------- the app
def app_times(folder: Path, views: list[str]) -> list[dict]:
    """The Spectrum page opened by its share link on a fresh server: cold, from the cache, in session,
    and from the cache in a new tab of the same browser.

    Seconds from ``goto`` to the first drawn chart (the visible group's scree: on a miss the
    preview drawn from the spectrum while the metrics run) and to the page's end (every metric,
    the verdict and the other layers' comparisons), in Debian's Chromium (bench/_app_driver.py),
    one fresh browser context per load (except the new tab, which shares the browser's HTTP cache).
    """
    import asyncio

    sys.path.insert(0, str(ROOT / "bench"))
    import _app_driver as drv  # noqa: E402  (bench-local module)
    from playwright.async_api import async_playwright

    async def run() -> list[dict]:
        out: list[dict] = []
        root = drv.make_cache_root(drv.temp_dir("bench-app-"))
        server = drv.Server(drv.free_port(), root, root / "server.log")
        server.start()
        try:
            async with async_playwright() as pw:
                browser = await drv.launch_browser(pw)
                for view in views:
                    url = f"{server.url}/Spectrum?source={folder}&layer={Q_PROJ}&view={view}"
                    for when in ("cold", "from cache"):
                        context, page, errors = await drv.new_page(browser)
                        t0 = time.perf_counter()
                        await page.goto(url)
                        state = await drv.wait_chart(page, 900)
                        seconds = time.perf_counter() - t0
                        await drv.wait_idle(page, 900)  # the page's comparisons finish before the next load
                        out.append({"view": view, "when": when, "seconds": seconds, "state": state,
                                    "complete_s": time.perf_counter() - t0, "errors": len(errors)})
                        if when == "from cache" and state == "chart":
                            # In the open page: one widget changed, the whole script rerun on cached results.
                            rerun = await drv.toggle_log_axis(page, 300)
                            await drv.wait_idle(page, 300)
                            out.append({"view": view, "when": "in session (Log scale toggled)", "seconds": rerun,
                                        "state": "chart", "errors": len(errors)})
                            # The link opened again in a new tab of the same browser: its HTTP cache
                            # holds Streamlit's frontend and plotly.js, as when a user reopens a link.
                            tab = await context.new_page()
                            t0 = time.perf_counter()
                            await tab.goto(url)
                            state = await drv.wait_chart(tab, 300)
                            out.append({"view": view, "when": "from cache, new tab (browser cache warm)",
                                        "seconds": time.perf_counter() - t0, "state": state, "errors": len(errors)})
                            await drv.wait_idle(tab, 300)
                        await context.close()
                await browser.close()
        finally:
            server.stop()
        return out

    return asyncio.run(run())


# ----------------------------------------------------------------------------- report
def _stage_rows(stages: dict) -> dict[str, float]:
    """Stage seconds grouped as the table shows them."""
    rows: dict[str, float] = {}
    for path, sec in stages.items():
        parts = path.split("/")
        top, leaf = parts[0], parts[-1]
        if leaf in ("read", "gram", "eigen"):
            key = f"{top}: {leaf}" if top == "decomposition" else f"{'/'.join(parts[1:-1]) or top}: {leaf}"
        else:
            key = "/".join(parts[1:]) if len(parts) > 1 else top
        rows[key] = rows.get(key, 0.0) + sec
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small sizes (~1 minute)")
    ap.add_argument("--views", default="A,B,dW")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--no-lorashare", action="store_true")
    ap.add_argument("--no-contention", action="store_true")
    ap.add_argument("--no-app", action="store_true", help="skip timing the Spectrum page in Chromium")
    ap.add_argument("--app-only", action="store_true", help="only time the Spectrum page in Chromium")
    ap.add_argument("--markdown", action="store_true", help="also print the README tables")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    p = QUICK if args.quick else FULL
    tag = "quick" if args.quick else "full"
    big = make_family(BENCH_DIR / f"family-{tag}-n{p['n']}", p["n"], p)
    small = make_family(BENCH_DIR / f"family-{tag}-n{p['n_small']}", p["n_small"], p)
    views, dtypes = args.views.split(","), args.dtypes.split(",")
    print(f"family: {p['n']} PEFT adapters (rank {p['rank']}, q_proj {p['dim']}x{p['dim']}, "
          f"v_proj {p['v_dim']}x{p['dim']}, bf16) in {big}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    results: dict = {"params": p, "cases": []}
    if args.app_only:
        results["app"] = app_times(big, [v for v in ("B", "dW") if v in views])
        report(results, args.markdown)
        return

    for view in views:
        ref = reference_sv(big, Q_PROJ, view)
        for dtype in dtypes:
            r = run_case({"family": str(big), "layer": Q_PROJ, "view": view, "dtype": dtype})
            err = max(abs(a - b) / b for a, b in zip(r["top16_sv"], ref) if b > 0)
            r.update(view=view, dtype=dtype, n=p["n"], layer=Q_PROJ, sv_rel_err=err)
            results["cases"].append(r)
            print(f"  {view:>2} {dtype}: whole {r['whole_s']:.1f} s, decomposition {r['decomposition_s']:.1f} s, "
                  f"peak {r['peak_mb']:.0f} MiB, top-16 sv rel err {err:.1e}", flush=True)
    # The same four groups lorashare compresses: A and B of q_proj and v_proj.
    for dtype in dtypes:
        for view in ("A", "B"):
            r = run_case({"family": str(big), "layer": V_PROJ, "view": view, "dtype": dtype, "decomposition": False})
            r.update(view=view, dtype=dtype, n=p["n"], layer=V_PROJ)
            results["cases"].append(r)
    for view in views:  # memory against N
        r = run_case({"family": str(small), "layer": Q_PROJ, "view": view, "dtype": "float64"})
        r.update(view=view, dtype="float64", n=p["n_small"], layer=Q_PROJ)
        results["cases"].append(r)
    if not args.no_lorashare:
        results["lorashare"] = run_lorashare(big)
        print(f"  lorashare compress: {results['lorashare']['seconds']:.1f} s in-process "
              f"({results['lorashare']['process_s']:.1f} s as a process)", flush=True)
    if not args.no_app:
        results["app"] = app_times(big, [v for v in ("B", "dW") if v in views])
    if not args.no_contention and "B" in views:
        base = next(c for c in results["cases"] if c["view"] == "B" and c["dtype"] == dtypes[0] and c["n"] == p["n"])
        r = contended({"family": str(big), "layer": Q_PROJ, "view": "B", "dtype": dtypes[0]})
        results["contention"] = {"quiet_s": base["whole_s"], "contended_s": r["whole_s"]}
    report(results, args.markdown)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _find(results, **kw):
    return next((c for c in results["cases"] if all(c.get(k) == v for k, v in kw.items())), None)


def report(results: dict, markdown: bool) -> None:
    p = results["params"]
    n, ns = p["n"], p["n_small"]
    big = [c for c in results["cases"] if c["n"] == n and c["layer"] == Q_PROJ]
    if big:
        _case_tables(results, big, n, ns, markdown)
    if "app" in results:
        print()
        _table(["Spectrum page by share link", "seconds to first chart", "seconds to the whole page", "state"],
               [[f"view {r['view']}, {r['when']}", f"{r['seconds']:.1f}",
                 f"{r['complete_s']:.1f}" if "complete_s" in r else "-",
                 r["state"] + (f", {r['errors']} console errors" if r["errors"] else "")] for r in results["app"]],
               markdown)
    if "contention" in results:
        c = results["contention"]
        print(f"\nwith one competing CPU-bound job: B analysis {c['quiet_s']:.1f} s -> {c['contended_s']:.1f} s "
              f"({c['contended_s'] / c['quiet_s']:.2f}x; a fair share of the cores would be 2x)")


def _case_tables(results: dict, big: list, n: int, ns: int, markdown: bool) -> None:
    stage_names: list[str] = []
    for c in big:
        for k in _stage_rows(c["stages"]):
            if k not in stage_names:
                stage_names.append(k)
    head = ["stage (s)"] + [f"{c['view']} {c['dtype'][-2:]}" for c in big]
    rows = [[s] + [f"{_stage_rows(c['stages']).get(s, 0.0):.2f}" for c in big] for s in stage_names]
    rows.append(["whole analysis"] + [f"{c['whole_s']:.1f}" for c in big])
    rows.append(["decomposition alone"] + [f"{c['decomposition_s']:.1f}" for c in big])
    rows.append(["whole / decomposition"] + [f"{c['whole_s'] / c['decomposition_s']:.2f}x" for c in big])
    rows.append([f"peak MiB, N = {n}"] + [f"{c['peak_mb']:.0f}" for c in big])
    rows.append([f"peak MiB, N = {ns}"] + [
        f"{_find(results, n=ns, view=c['view'], dtype='float64')['peak_mb']:.0f}" if c["dtype"] == "float64" else "-"
        for c in big])
    rows.append([f"N = {n} / N = {ns} memory"] + [
        f"{c['peak_mb'] / _find(results, n=ns, view=c['view'], dtype='float64')['peak_mb']:.2f}"
        if c["dtype"] == "float64" else "-" for c in big])
    rows.append(["top-16 sv rel. err"] + [f"{c['sv_rel_err']:.1e}" for c in big])
    _table(head, rows, markdown)
    if "lorashare" in results:
        ls = results["lorashare"]["seconds"]
        print()
        head2 = ["A + B of q_proj and v_proj", "seconds", "lorashare's time / ours"]
        rows2 = [["lorashare compress (float32, in-process)", f"{ls:.1f}", "1.00x"]]
        for dtype in sorted({c["dtype"] for c in results["cases"]}, reverse=True):
            tot = sum(c["whole_s"] for c in results["cases"] if c["n"] == n and c["dtype"] == dtype
                      and c["view"] in ("A", "B"))
            verdict = "faster than lorashare" if tot < ls else "slower than lorashare"
            rows2.append([f"subspace-explorer whole analysis, {dtype}", f"{tot:.1f}", f"{ls / tot:.2f}x ({verdict})"])
        _table(head2, rows2, markdown)


def _table(head, rows, markdown) -> None:
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return
    for r in [head] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


if __name__ == "__main__":
    main()
