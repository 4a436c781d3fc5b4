"""The long verification run: random guest programs against every merged era.

Prints `name: value unit` lines: programs searched and violations found per
era and mode (nested-tdp on VMX and on SVM), and the time taken.  Shadow paging runs with kvm.ko's
force_flush_and_sync_on_reuse=1, which closes the deviations that
docs/findings.md describes; the tests show they appear without it.

    ./run check-all [--examples 10000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmu_model import all_eras  # noqa: E402
from mmu_model.analysis.search import find_violation  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000)
    args = ap.parse_args(argv)
    failures = 0
    for era in [e.name for e in all_eras() if e.merged]:
        for mode, vendor in (("shadow", "vmx"), ("tdp", "vmx"), ("tdp-legacy", "vmx"),
                             ("nested-tdp", "vmx"), ("nested-tdp", "svm")):
            t0 = time.perf_counter()
            found, n = find_violation(era, mode, vendor, examples=args.examples,
                                      flush_on_reuse=(mode == "shadow"))
            tag = f"{era}_{mode}" + ("_svm" if vendor == "svm" else "")
            tag = tag.replace(".", "_").replace("-", "_")
            print(f"{tag}_programs: {n} count")
            print(f"{tag}_violations: {0 if found is None else 1} count")
            print(f"{tag}_seconds: {time.perf_counter() - t0:.1f} s")
            failures += found is not None
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
