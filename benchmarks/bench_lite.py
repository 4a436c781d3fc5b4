"""The zero-install classroom as one student's browser gets it.

Builds the JupyterLite site (or reuses a fresh build), serves it on 127.0.0.1,
and drives Debian's Chromium as a student on a first visit: nothing cached,
the lab notebook opened from the landing page's link.  Prints `name: value
unit` lines.

    ./run bench-lite                      # 100 clicks
    .venv/bin/python benchmarks/bench_lite.py --clicks 20

* first_load: from navigation to the notebook on screen (its first cell drawn).
* kernel_ready: from navigation to a kernel that has answered (Pyodide started
  and the preloaded wheels imported, in the student's browser).
* lab_on_screen: from navigation to the lab's panes drawn (Run All done).
* kernel_ready_again: the same notebook opened again in the same browser
  (its cache warm), from navigation to a kernel that has answered.
* click_to_update: from a click on a register bit to the pane naming the new
  step, median and p95 over --clicks clicks (the model runs in the browser).
* fetched_first_visit: bytes the browser fetched for that first visit.
* site_on_disk / site_gzipped: the folder a teacher copies to a static host,
  and its size if the host compresses every file (gzip -6).
* browser_memory: proportional set size (PSS) of every Chromium process with
  the lab open, and above the same browser on a blank page; the server's
  memory per student is zero (it only serves files).
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import lite_browser as L  # noqa: E402

STEP_JS = ("([m, i]) => { const s = document.querySelector(`.mmu-pane[data-mode=${m}] "
           ".mmu-status`); return s && s.innerText.includes(`step ${i} `); }")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def out(name, value, unit=""):
    print(f"{name}: {value} {unit}".rstrip(), flush=True)


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            found.append(k)
            todo.append(k)
    return found


def chromium_pss_mib() -> float:
    """PSS of this process's Chromium descendants (shared pages counted once)."""
    total = 0
    for pid in descendants(os.getpid()):
        try:
            if "chrom" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def site_sizes(site: Path) -> tuple[int, int, int]:
    files = [f for f in site.rglob("*") if f.is_file()]
    raw = sum(f.stat().st_size for f in files)
    zipped = sum(len(gzip.compress(f.read_bytes(), 6)) for f in files)
    return len(files), raw, zipped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=100)
    a = ap.parse_args(argv)
    if L.available():
        print(f"bench-lite: {L.available()}", file=sys.stderr)
        return 2
    site = L.lite.build(reuse=True)
    n, raw, zipped = site_sizes(site)
    out("site_files", n)
    out("site_on_disk", f"{raw / 1e6:.1f}", "MB")
    out("site_gzipped", f"{zipped / 1e6:.1f}", "MB")
    with L.served() as url, L.chromium() as b:
        s = L.Session(b)
        blank = s.page()
        blank.goto("about:blank")
        time.sleep(2)
        base = chromium_pss_mib()
        fetched = []
        page = s.page()
        def finished(r):
            fetched.append(r)
        s.context.on("requestfinished", finished)          # the page's and its workers'
        t0 = time.perf_counter()
        page.goto(f"{url}notebooks/index.html?path=notebooks/lab.ipynb", timeout=240_000)
        page.wait_for_selector(".jp-Cell", timeout=240_000)
        t_shown = time.perf_counter() - t0
        page.wait_for_function(L.APP_JS, timeout=240_000)
        page.evaluate(f"({L.KERNEL_READY_JS})('notebooks/lab.ipynb')")
        t_kernel = time.perf_counter() - t0
        errors = L.errors(L.run_all(page))
        if errors:
            print(f"bench-lite: the lab raised in the browser: {errors}", file=sys.stderr)
            return 1
        page.wait_for_selector(".mmu-pane[data-mode=shadow]", timeout=60_000)
        t_lab = time.perf_counter() - t0
        out("first_load", f"{t_shown:.1f}", "s")
        out("kernel_ready", f"{t_kernel:.1f}", "s")
        out("lab_on_screen", f"{t_lab:.1f}", "s")
        out("fetched_first_visit", f"{sum(r.sizes()['responseBodySize'] for r in fetched) / 1e6:.1f}",
            "MB")
        s.context.remove_listener("requestfinished", finished)
        lat = []
        toggle = page.locator("button.widget-toggle-button").filter(
            has_text=re.compile(r"^\s*WP\s*$"))
        for i in range(a.clicks):
            c0 = time.perf_counter()
            toggle.click()
            page.wait_for_function(STEP_JS, arg=["shadow", i], timeout=30_000)
            lat.append((time.perf_counter() - c0) * 1000)
        out("click_to_update_median", f"{statistics.median(lat):.0f}", "ms")
        out("click_to_update_p95", f"{pct(lat, 95):.0f}", "ms")
        out("click_to_update_max", f"{max(lat):.0f}", "ms")
        out("clicks", len(lat))
        pss = chromium_pss_mib()
        out("browser_memory", f"{pss:.0f}", "MiB")
        out("browser_memory_above_blank", f"{pss - base:.0f}", "MiB")
        out("server_memory_per_student", 0, "MiB")
        page.close()
        again = s.page()
        t0 = time.perf_counter()
        again.goto(f"{url}notebooks/index.html?path=notebooks/lab.ipynb", timeout=240_000)
        again.wait_for_function(L.APP_JS, timeout=240_000)
        again.evaluate(f"({L.KERNEL_READY_JS})('notebooks/lab.ipynb')")
        out("kernel_ready_again", f"{time.perf_counter() - t0:.1f}", "s")
        again.close()
        if s.offsite:
            print(f"bench-lite: requests left 127.0.0.1: {s.offsite[:5]}", file=sys.stderr)
            return 1
        out("offsite_requests", 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
