"""Throughput and memory of the model on a seeded random workload.

Prints one `name: value unit` line per figure.  Usage:

    ./run bench                      # 100,000 events per configuration
    .venv/bin/python benchmarks/bench_events.py --events 5000   # quick (CI)
"""
from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmu_model import Simulation  # noqa: E402
from mmu_model.kernel.registers import EFER, PRESETS, X86_CR0, X86_CR4  # noqa: E402


def workload(n: int, vcpus: int, seed: int = 1, nested: bool = False) -> list[dict]:
    """A guest that mostly switches address spaces, with the occasional CR0.WP
    toggle, PGE toggle, INVLPG, INVPCID, EFER.NX write and SMI/RSM pair; as L2
    under nested TDP, also the occasional exit to L1 and re-entry."""
    rng = random.Random(seed)
    spaces = [0x1000 * (i + 1) | i for i in range(6)]
    smm = [False] * vcpus
    in_l1 = [False] * vcpus
    events = []
    for _ in range(n):
        v = rng.randrange(vcpus)
        r = rng.random()
        if in_l1[v]:
            ev, in_l1[v] = {"op": "vmentry"}, False
        elif nested and r < 0.05:
            ev, in_l1[v] = {"op": "vmexit"}, True
        elif smm[v]:
            ev, smm[v] = {"op": "rsm"}, False
        elif r < 0.55:
            ev = {"op": "mov_cr3", "value": rng.choice(spaces) | (rng.random() < 0.7) << 63}
        elif r < 0.70:
            ev = {"op": "mov_cr0", rng.choice(("set", "clear")): int(X86_CR0.WP)}
        elif r < 0.78:
            ev = {"op": "mov_cr4", rng.choice(("set", "clear")): int(X86_CR4.PGE)}
        elif r < 0.88:
            ev = {"op": "invlpg", "addr": rng.randrange(1 << 47) & ~0xFFF}
        elif r < 0.94:
            ev = {"op": "invpcid", "type": rng.randrange(4), "pcid": rng.randrange(6), "addr": 0x1000}
        elif r < 0.97:
            ev = {"op": "wrmsr_efer", rng.choice(("set", "clear")): int(EFER.NX)}
        else:
            ev, smm[v] = {"op": "smi"}, True
        ev["vcpu"] = v
        events.append(ev)
    return events


def measure(era, mode, events, vcpus, trace, record=True, check=False):
    p = PRESETS["long-mode-pcid"]
    start = {"cr0": p.cr0, "cr3": p.cr3, "cr4": p.cr4, "efer": p.efer}
    sim = Simulation(era, mode, "vmx", vcpus, start, trace=trace, record=record, check=check)
    gc.collect()
    t0 = time.perf_counter()
    for ev in events:
        sim.step(ev)
    return len(events) / (time.perf_counter() - t0), sim


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--era", default="v6.18")
    args = ap.parse_args(argv)
    print(f"events: {args.events} count")
    print(f"vcpus: {args.vcpus} count")
    for mode in ("shadow", "tdp", "nested-tdp"):
        events = workload(args.events, args.vcpus, nested=mode == "nested-tdp")
        tag = f"{args.era}_{mode.replace('-', '_')}"
        # The kernel logic alone (totals only), then with every step's outcome
        # recorded as the CLI and notebooks do, without and with the trace.
        rate, _ = measure(args.era, mode, events, args.vcpus, False, record=False)
        print(f"{tag}_model_only_rate: {rate:,.0f} events/s")
        for trace in (False, True):
            rate, sim = measure(args.era, mode, events, args.vcpus, trace)
            print(f"{tag}_trace_{'on' if trace else 'off'}_rate: {rate:,.0f} events/s")
            del sim
        # What the CLI and notebooks run: trace and the architectural checker on.
        rate, sim = measure(args.era, mode, events, args.vcpus, True, check=True)
        print(f"{tag}_trace_and_checker_rate: {rate:,.0f} events/s")
        del sim
    events = workload(args.events, args.vcpus)
    tracemalloc.start()
    _rate, sim = measure(args.era, "shadow", events, args.vcpus, True, check=True)
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{args.era}_shadow_trace_on_peak_memory: {peak / 2**20:.1f} MiB")
    print(f"{args.era}_shadow_trace_on_bytes_per_event: {peak / args.events:,.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
