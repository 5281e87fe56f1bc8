"""Load test: N concurrent browser sessions on one fresh app server (issue 16, "a server that holds").

Starts ``streamlit run app.py`` on a free port with its own cache root in a temporary folder (the
built zoo linked in, the results cache empty), opens N Chromium contexts at once on different zoo
families and pages (deep links ``/Page?source=zoo:NAME&layer=LAYER``), and waits for each page's
first chart (or error) and for its script to finish.  It reports, in one table per concern:

- per session: seconds to the first chart and to the end of the page's run, charts drawn,
  ``st.error``/exception elements shown, browser console errors;
- the server's peak resident memory (the kernel's ``VmHWM``, and the largest ``VmRSS`` sampled,
  children included);
- computations per cache key: how many times each entry was written (inotify on the cache folder;
  the pages of several sessions share keys, which the per-key lock must compute once).

Exit 0 if every session charted without an error and every key was computed exactly once, else 1.
A measurement, not a test: no time is asserted (the machine's load decides the times).

Usage::

    .venv/bin/python bench/load_test.py [--sessions 8] [--port PORT] [--timeout 300] [--server-mode] [--keep]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _app_driver as drv  # noqa: E402


def plan_sessions(n: int) -> list[tuple[str, str, str]]:
    """``n`` (page, source, layer): families and pages in turn, a different layer on each round."""
    families = drv.built_zoo_families()
    if not families:
        sys.exit("no zoo family is built: run `.venv/bin/python -m explorer zoo build` first")
    layers = {f: drv.layer_names(f) for f in families}
    plan = []
    for i in range(n):
        fam = families[i % len(families)]
        names = layers[fam]
        plan.append((drv.PAGES[i % len(drv.PAGES)], fam, names[(i // len(families) + 1) % len(names)]))
    return plan


async def one_session(browser, base: str, page_name: str, source: str, layer: str, timeout: float) -> dict:
    context, page, console = await drv.new_page(browser)
    t0 = time.monotonic()
    out = {"outcome": "timeout", "first": None, "done": None, "charts": 0, "errors": 0}
    try:
        await page.goto(f"{base}/{page_name}?source={source}&layer={layer}", timeout=timeout * 1000)
        out["outcome"] = await drv.wait_chart(page, timeout)
        out["first"] = time.monotonic() - t0
        if await drv.wait_idle(page, max(1.0, timeout - out["first"])):
            out["done"] = time.monotonic() - t0
        out["charts"], out["errors"] = await drv.count(page, drv.CHART), await drv.count(page, drv.ERROR)
    except Exception as exc:  # noqa: BLE001 - a failed session is reported, the others go on
        out["outcome"] = f"failed: {type(exc).__name__}"
    out["console"] = len(console)
    await context.close()
    return out


async def drive(base: str, plan: list[tuple[str, str, str]], timeout: float) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await drv.launch_browser(pw)
        try:
            return await asyncio.gather(*(one_session(browser, base, *spec, timeout) for spec in plan))
        finally:
            await browser.close()


def seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions (default 8)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds each session may wait for its chart and its run")
    ap.add_argument("--server-mode", action="store_true", help="run the server with EXPLORER_SERVER_MODE=1")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache folder and server log")
    args = ap.parse_args(argv)

    plan = plan_sessions(args.sessions)
    tmp = drv.temp_dir("load-test-")
    results = drv.make_cache_root(tmp) / "results"
    watcher = drv.EntryWatcher(results)
    server = drv.Server(args.port or drv.free_port(), results.parent, tmp / "server.log", args.server_mode)
    ok = False
    try:
        started = server.start()
        sampler = drv.MemorySampler(server.pid)
        sampler.start()
        print(f"server pid {server.pid} on {server.url} (healthy after {started:.1f} s), cache {results.parent}; "
              f"{len(plan)} sessions at once", flush=True)
        t0 = time.monotonic()
        runs = asyncio.run(drive(server.url, plan, args.timeout))
        wall = time.monotonic() - t0
        hwm, sampled = sampler.finish()
    finally:
        server.stop()
        writes = watcher.close()
    entries = drv.check_entries(results)

    print()
    rows = []
    for i, ((page, source, layer), r) in enumerate(zip(plan, runs), 1):
        good = r["outcome"] == "chart" and not r["errors"] and r["done"] is not None
        rows.append([i, page, source, layer, seconds(r["first"]), seconds(r["done"]), r["charts"], r["errors"],
                     r["console"], "ok" if good else r["outcome"] if r["outcome"] != "chart" else "FAIL"])
    drv.print_table(["#", "page", "source", "layer", "first chart s", "run done s", "charts", "st.error",
                     "console err", "status"], rows, left=4)
    print(f"\nall sessions: {wall:.1f} s wall; server peak RSS {hwm:.0f} MiB (VmHWM), "
          f"{sampled:.0f} MiB sampled max (VmRSS every 0.2 s, children included)\n")

    keys = sorted(set(writes) | set(entries["locked"]) | set(entries["valid"]) | set(entries["damaged"]))
    valid = set(entries["valid"])
    key_rows = [[k[:12], drv.entry_label(results, k) if k in valid else "(no valid entry)", writes[k]] for k in keys]
    drv.print_table(["cache key", "analysis", "computations"], sorted(key_rows, key=lambda r: r[1]), left=2)
    once = all(writes[k] == 1 for k in keys) and not entries["damaged"]
    charted = all(r[-1] == "ok" for r in rows)
    ok = charted and once
    print(f"\n{len(keys)} keys, {sum(writes.values())} computations; "
          f"{'every key computed once' if once else 'NOT every key computed exactly once'}; "
          f"{sum(r[-1] == 'ok' for r in rows)}/{len(rows)} sessions charted without an error")
    if ok and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp} (server log: {tmp / 'server.log'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
