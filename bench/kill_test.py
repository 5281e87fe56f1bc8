"""Kill test: SIGKILL the app's server in the middle of a computation, restart it, reload the page.

Starts ``streamlit run app.py`` on a free port with a fresh cache root in a temporary folder (the
built zoo linked in, no result cached), opens a page whose analysis takes a few seconds
(default: the Spectrum of ``zoo:digits-lora``, ``layers.1``), waits until the page shows its
progress bar (plus ``--kill-after`` seconds), SIGKILLs the server, and checks the cache folder:
at least one computation was under way (a key locked, no entry written), and every entry on disk
reads back whole and bound to its key (a half-written one would be served).  Then it restarts
the server on the same port and cache, reloads the page, and checks that it charts, without an
error, and that the interrupted analyses are now stored.  Each step is printed; exit 0 if all held.

Usage::

    .venv/bin/python bench/kill_test.py [--page Spectrum] [--source zoo:digits-lora] [--layer layers.1]
                                        [--kill-after 1.0] [--port PORT] [--timeout 300] [--keep]
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


class Steps:
    """Prints each step as it is decided; remembers whether all held."""

    def __init__(self) -> None:
        self.n, self.ok, self.t0 = 0, True, time.monotonic()

    def __call__(self, held: bool, what: str) -> bool:
        self.n += 1
        self.ok &= held
        print(f"{self.n:2d}. [{'ok' if held else 'FAIL'}] {time.monotonic() - self.t0:6.1f} s  {what}", flush=True)
        return held


async def scenario(server: drv.Server, url: str, results, args, step: Steps) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await drv.launch_browser(pw)
        context, page, _console = await drv.new_page(browser)
        await page.goto(url, timeout=args.timeout * 1000)
        try:
            await page.wait_for_selector(drv.PROGRESS, timeout=args.timeout * 1000)
            shown = True
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError
            shown = False
        if not step(shown, f"page shows the progress of its computation: {url}"):
            return
        await asyncio.sleep(args.kill_after)
        charted = await drv.count(page, drv.CHART)
        server.kill()
        step(True, f"server SIGKILLed {args.kill_after:g} s after the progress bar appeared "
                   f"({charted} chart(s) drawn by then)")

        found = drv.check_entries(results)
        interrupted = sorted(set(found["locked"]) - set(found["valid"]) - set(found["damaged"]))
        step(bool(interrupted), f"{len(interrupted)} computation(s) were under way (key locked, no entry written): "
                                f"{', '.join(k[:12] for k in interrupted) or 'none (raise the load or lower --kill-after)'}")
        step(not found["damaged"], f"{len(found['valid'])} entries on disk, each read back whole and bound to its key; "
                                   f"{len(found['damaged'])} damaged or half-written")
        if found["tmp"]:
            print(f"      {len(found['tmp'])} temporary file(s) of the killed writer left (never served): "
                  f"{', '.join(found['tmp'])}")

        took = server.start()
        step(True, f"server restarted on the same port and cache (pid {server.pid}, healthy after {took:.1f} s)")
        await page.reload(timeout=args.timeout * 1000)
        outcome = await drv.wait_chart(page, args.timeout)
        step(outcome == "chart", f"reloaded page: first chart ({outcome})")
        idle = await drv.wait_idle(page, args.timeout)
        charts, errors = await drv.count(page, drv.CHART), await drv.count(page, drv.ERROR)
        step(idle and charts > 0 and not errors, f"page run finished: {charts} charts, {errors} st.error")

        after = drv.check_entries(results)
        stored = [k for k in interrupted if k in after["valid"]]
        step(len(stored) == len(interrupted) and not after["damaged"],
             f"{len(stored)}/{len(interrupted)} interrupted analyses now stored "
             f"({'; '.join(drv.entry_label(results, k) for k in stored)}); {len(after['damaged'])} damaged entries")
        await context.close()
        await browser.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--page", default="Spectrum", choices=drv.PAGES)
    ap.add_argument("--source", default="zoo:digits-lora", help="a built zoo family (default zoo:digits-lora)")
    ap.add_argument("--layer", default="layers.1")
    ap.add_argument("--kill-after", type=float, default=1.0, help="seconds between the progress bar and the kill")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds each wait may take")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache folder and server log")
    args = ap.parse_args(argv)

    tmp = drv.temp_dir("kill-test-")
    results = drv.make_cache_root(tmp) / "results"
    server = drv.Server(args.port or drv.free_port(), results.parent, tmp / "server.log")
    step = Steps()
    try:
        took = server.start()
        step(True, f"server started on {server.url} (pid {server.pid}, healthy after {took:.1f} s), "
                   f"fresh cache {results.parent}")
        url = f"{server.url}/{args.page}?source={args.source}&layer={args.layer}"
        asyncio.run(scenario(server, url, results, args, step))
    except Exception as exc:  # noqa: BLE001 - reported as a failed step
        step(False, f"{type(exc).__name__}: {exc}")
    finally:
        server.stop()
    print(f"\nkill test {'held' if step.ok else 'FAILED'}")
    if step.ok and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp} (server log: {tmp / 'server.log'})")
    return 0 if step.ok else 1


if __name__ == "__main__":
    sys.exit(main())
