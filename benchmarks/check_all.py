"""The long verification run: random guest programs against every merged era.

Prints `name: value unit` lines: programs searched and violations found per
era and mode (nested-tdp on VMX and on SVM), and the time taken.  Shadow paging runs with kvm.ko's
force_flush_and_sync_on_reuse=1, which closes the deviations that
docs/findings.md describes; the tests show they appear without it.

    ./run check-all [--examples 10000] [--jobs N]   (default: every core)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmu_model import all_eras  # noqa: E402
from mmu_model.analysis.search import find_violation, ordered_map  # noqa: E402


def _search(task):
    """One era and mode: (programs, found?, seconds)."""
    era, mode, vendor, examples = task
    t0 = time.perf_counter()
    found, n = find_violation(era, mode, vendor, examples=examples,
                              flush_on_reuse=(mode == "shadow"))
    return n, found is not None, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="processes (default: every core); each search is its own seeded run")
    args = ap.parse_args(argv)
    tasks = [(era, mode, vendor, args.examples) for era in [e.name for e in all_eras() if e.merged]
             for mode, vendor in (("shadow", "vmx"), ("tdp", "vmx"), ("tdp-legacy", "vmx"),
                                  ("nested-tdp", "vmx"), ("nested-tdp", "svm"))]
    progress = None
    if sys.stderr.isatty():
        def progress(done, total):
            print(f"\rsearches: {done}/{total}", end="", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    results = ordered_map(_search, tasks, args.jobs, progress)
    if progress is not None:
        print("\r\033[K", end="", file=sys.stderr)
    failures = 0
    for (era, mode, vendor, _n), (n, found, seconds) in zip(tasks, results):
        tag = f"{era}_{mode}" + ("_svm" if vendor == "svm" else "")
        tag = tag.replace(".", "_").replace("-", "_")
        print(f"{tag}_programs: {n} count")
        print(f"{tag}_violations: {1 if found else 0} count")
        print(f"{tag}_seconds: {seconds:.1f} s")
        failures += found
    print(f"jobs: {args.jobs} count")
    print(f"total_seconds: {time.perf_counter() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
