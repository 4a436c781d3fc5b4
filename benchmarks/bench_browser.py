"""The app under a person's clicks and under a full classroom, in a real browser.

Voila serves notebooks/lab.ipynb on 127.0.0.1; Playwright drives Debian's
Chromium.  Prints `name: value unit` lines.

    ./run bench-browser                     # 100 clicks; 30 sessions x 30 changes
    ./run bench-browser --cold              # the room without preheated kernels
    .venv/bin/python benchmarks/bench_browser.py --clicks 10 --sessions 3 --changes 5

* latency: from a click on a register bit to the step's diagram in the page
  (the shadow pane's status line names the new step), over --clicks clicks.
* load: --sessions pages (each its own Voila kernel) join one every --stagger
  seconds, as students do; once all are open, each makes --changes changes
  with --think seconds between them, and every answer is checked: the pane
  must name the step it just caused within 1 s of the click reaching the page
  ("answer").  "click_to_diagram" also counts the browser's own work on the
  click, which here competes with 30 kernels and the server for 2 cores (in a
  room the browsers run on the students' machines).  Memory per session is
  the kernels' resident size.

The room's server is the one ./run room starts (room/serve.py: the token in the
address, at most --sessions kernels, the preheated pool of 6), on 127.0.0.1.
Once every session has made its changes (their kernels still held),
--past-ceiling more students arrive at once: each must get the "room is
full" page (HTTP 503); its response times are printed,
and the room's memory at its largest (server, kernels and their sum, from
/proc) beside the ceiling room/serve.py derives for --sessions places.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib.util
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import browser as B  # noqa: E402

# room/serve.py by its path (room/ on sys.path would let its voila.py, Voila's
# configuration file, hide the voila package).
_spec = importlib.util.spec_from_file_location("room_serve", B.ROOT / "room" / "serve.py")
serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve)

STEP_JS = ("([m, i]) => { const s = document.querySelector(`.mmu-pane[data-mode=${m}] "
           ".mmu-status`); return s && s.innerText.includes(`step ${i} `); }")
BIT_BUTTON = "button.widget-toggle-button"


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def _toggle_and_wait(page, bit, index, timeout_ms, split=None):
    """Click a bit and wait for the pane to name the new step; the total time in
    ms.  ``split`` collects the time after the click was delivered (the
    server's answer), apart from the browser's own work on the click."""
    import re
    t0 = time.perf_counter()
    await page.locator(BIT_BUTTON).filter(has_text=re.compile(rf"^\s*{bit}\s*$")).click()
    t1 = time.perf_counter()
    await page.wait_for_function(STEP_JS, arg=["shadow", index], timeout=timeout_ms)
    t2 = time.perf_counter()
    if split is not None:
        split.append((t2 - t1) * 1000)
    return (t2 - t0) * 1000


async def latency(url, clicks):
    from playwright.async_api import async_playwright
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=B.CHROMIUM, args=B.FLAGS)
        page = await b.new_page(viewport={"width": 1280, "height": 720})
        await page.goto(url, timeout=90_000)
        await page.wait_for_selector(".mmu-pane[data-mode=shadow]", timeout=90_000)
        times = [await _toggle_and_wait(page, "WP", i, 10_000) for i in range(clicks)]
        await b.close()
    return times


async def session(b, url, n, changes, stagger, think, all_open, results):
    await asyncio.sleep(n * stagger)
    page = await b.new_page(viewport={"width": 1280, "height": 720})
    t0 = time.perf_counter()
    stage = "page"
    try:
        await page.goto(url, timeout=180_000)
        stage = "lab"
        await page.wait_for_selector(".mmu-pane[data-mode=shadow]", timeout=180_000)
        results["joins"].append(time.perf_counter() - t0)
        joined = True
    except Exception as e:                     # the page never showed the lab
        results["failed_joins"] += 1
        text = ""
        with contextlib.suppress(Exception):           # what the page shows instead
            text = (await page.inner_text("body", timeout=5_000))[-300:]
        results["why"].append(f"session {n}: no {stage} after {time.perf_counter() - t0:.0f} s"
                              f" ({type(e).__name__}) {text!r}")
        joined = False
    results["open"] += 1
    if results["open"] == results["sessions"]:
        all_open.set()
    await all_open.wait()
    if not joined:
        results["errors"] += changes
        await page.close()
        return
    for i in range(changes):
        bit = ("WP", "PGE", "SMEP")[i % 3]
        try:
            results["times"].append(await _toggle_and_wait(page, bit, i, 1_000,
                                                           results["answers"]))
        except Exception:
            results["errors"] += 1
        await asyncio.sleep(think)
    await page.close()


# Chromium opens at most six connections to one host, and a Voila page holds
# one while its notebook runs: a browser per few students, as in a real room.
PAGES_PER_BROWSER = 4


def past_the_ceiling(url, requests):
    """``requests`` students more, at once, while the room is full and busy: each
    one's (HTTP status, seconds)."""
    def one(_):
        t0 = time.perf_counter()
        try:
            urllib.request.urlopen(url, timeout=60).close()
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:
            status = 0
        return status, time.perf_counter() - t0
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        return list(pool.map(one, range(requests)))


async def load(url, sessions, changes, stagger, think, server_pid, extra):
    from playwright.async_api import async_playwright
    results = {"times": [], "answers": [], "errors": 0, "joins": [], "open": 0,
               "sessions": sessions, "rss": [], "failed_joins": 0, "why": [],
               "server_pid": server_pid, "full": []}
    all_open = asyncio.Event()


    async def measure():                      # the room's memory at its largest
        while not done.is_set():
            server, kernels, total = serve.memory(server_pid)
            if total > results.get("total_mib", 0):
                results.update(server_mib=server, rss=kernels, total_mib=total)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 2)

    done = asyncio.Event()
    sampler = asyncio.create_task(measure())

    async with async_playwright() as p:
        browsers = [await p.chromium.launch(executable_path=B.CHROMIUM, args=B.FLAGS)
                    for _ in range(-(-sessions // PAGES_PER_BROWSER))]
        await asyncio.gather(*(session(browsers[n // PAGES_PER_BROWSER], url, n, changes,
                                       stagger, think, all_open, results)
                               for n in range(sessions)))
        # The class has made its changes and still holds every place (a closed
        # page keeps its kernel until the cull): latecomers now.  Not during
        # the clicks, where their set-up would compete with the answers timed
        # against 1 s.
        cpu = serve.cpu_seconds(server_pid)
        results["full"] = await asyncio.to_thread(past_the_ceiling, url, extra)
        results["full_cpu"] = serve.cpu_seconds(server_pid) - cpu
        done.set()
        await sampler
        for b in browsers:
            await b.close()
    results["kernel_rss_mib"] = results["rss"]
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=30)
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--stagger", type=float, default=2.0, help="seconds between joins")
    ap.add_argument("--think", type=float, default=1.0, help="seconds between a student's clicks")
    ap.add_argument("--voila-arg", action="append", default=[], metavar="ARG",
                    help="an extra Voila option for the room's server")
    ap.add_argument("--cold", action="store_true",
                    help="no preheated kernels (./run room uses --preheat_kernel --pool_size=6)")
    ap.add_argument("--past-ceiling", type=int, default=10, metavar="N",
                    help="students more than --sessions who come once the room is full")
    args = ap.parse_args(argv)
    reason = B.available()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with B.voila(log="bench-latency") as url:
        times = asyncio.run(latency(url, args.clicks))
        print(f"latency_clicks: {len(times)} count")
        print(f"latency_median: {statistics.median(times):.0f} ms")
        print(f"latency_p95: {pct(times, 95):.0f} ms")
        print(f"latency_max: {max(times):.0f} ms")
    # A fresh server for the room, so kernels from the latency run do not count.
    # The room as ./run room serves it (room/serve.py: the token, a ceiling of
    # --sessions places, the preheated pool), on 127.0.0.1.
    room = ["--preheat_kernel=False"] if args.cold else []
    log = B.LOGS / "bench-room.log"
    with serve.running(["--Voila.ip=127.0.0.1", f"--port={B.free_port()}",
                        f"--max-students={args.sessions}", *room, *args.voila_arg],
                       log) as (proc, url):
        t0 = time.perf_counter()
        r = asyncio.run(load(url, args.sessions, args.changes, args.stagger, args.think,
                             proc.pid, args.past_ceiling))
        wall = time.perf_counter() - t0
    answered = len(r["times"])
    print(f"load_sessions: {args.sessions} count")
    print(f"load_changes_per_session: {args.changes} count")
    print(f"load_join_failures: {r['failed_joins']} count")
    if r["joins"]:
        print(f"load_join_median: {statistics.median(r['joins']):.1f} s")
        print(f"load_join_max: {max(r['joins']):.1f} s")
    print(f"load_answered_within_1s: {answered} count")
    print(f"load_errors_or_late: {r['errors']} count")
    if r["times"]:
        print(f"load_answer_median: {statistics.median(r['answers']):.0f} ms")
        print(f"load_answer_p95: {pct(r['answers'], 95):.0f} ms")
        print(f"load_answer_max: {max(r['answers']):.0f} ms")
        print(f"load_click_to_diagram_median: {statistics.median(r['times']):.0f} ms")
        print(f"load_click_to_diagram_p95: {pct(r['times'], 95):.0f} ms")
    if r["kernel_rss_mib"]:
        print(f"load_kernel_rss_per_session: {statistics.mean(r['kernel_rss_mib']):.0f} MiB")
        print(f"load_kernel_rss_max: {max(r['kernel_rss_mib']):.0f} MiB")
        print(f"load_server_rss: {r['server_mib']:.0f} MiB")
        print(f"load_room_rss_total: {r['total_mib']:.0f} MiB")
        print(f"load_room_ceiling: {serve.room_mib(args.sessions)} MiB")
    full = [t for status, t in r["full"] if status == 503]
    print(f"full_page_requests: {len(r['full'])} count")
    print(f"full_page_503: {len(full)} count")
    if full:
        print(f"full_page_median: {statistics.median(full) * 1000:.0f} ms")
        print(f"full_page_max: {max(full) * 1000:.0f} ms")
        # The server's CPU over the burst, per request.
        print(f"full_page_server_cpu: {r['full_cpu'] / len(r['full']) * 1000:.0f} ms")
    print(f"load_wall_time: {wall:.0f} s")
    # What went wrong, on stderr: why a page failed, the server's error lines.
    errors = B.log_problems(log)
    print(f"load_server_errors: {len(errors)} count")
    for line in [*r["why"], *errors[:10]]:
        print(line[:300], file=sys.stderr)
    if r["why"] or errors:
        print(f"the room's server log: {log}", file=sys.stderr)
    ok = (r["errors"] == 0 and answered == args.sessions * args.changes and not errors
          and len(full) == len(r["full"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
