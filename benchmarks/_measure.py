"""Run one in-process measurement in a fresh interpreter and print its figures
as JSON: the benchmark starts it once for this tree and once for 80683d5 (put
first on sys.path), so both see the same events.

    python benchmarks/_measure.py ROOT SCENARIO.json MODE WHAT
    WHAT: model | trace | trace+checker
"""
from __future__ import annotations

import gc
import json
import sys
import time


def main(argv) -> int:
    root, path, mode, what = argv
    sys.path.insert(0, root)
    from mmu_model import Simulation, load_scenario
    sc = load_scenario(path)
    kw = {"model": dict(trace=False, record=False, check=False),
          "trace": dict(trace=True, check=False),
          "trace+checker": dict(trace=True, check=True)}[what]
    sim = Simulation("v6.18", mode, "vmx", sc.vcpus, sc.start, **kw)
    if getattr(sim, "keep", None) is not None:
        sim.keep = False            # as the CLI runs it: outcomes written, not kept
    events = sc.events
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    for ev in events:
        sim.step(ev)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    print(json.dumps({"events": len(events), "cpu": cpu, "wall": wall}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
