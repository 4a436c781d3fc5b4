"""The probe against this machine's KVM: what it compares, how often it agrees, how fast.

Prints one `name: value unit` line per figure.  Usage:

    ./run bench-probe                                   # library + 200 random programs
    ./run bench-probe --trace                           # + the same programs traced (root)
    .venv/bin/python benchmarks/bench_probe.py --programs 50 --length 12

Figures: library scenarios probed / refused (by reason), steps compared and
agreeing, the same for seeded random programs (register writes and INVLPG),
and time per step: in KVM_RUN on the real kernel (from the step's first
KVM_RUN to its end marker), end to end (VM creation, stats fds and the model
included), and in the model alone (run_scenario with its trace on); plus one
`python -m mmu_model probe` run timed as a user runs it.  Exits 2 with one
line when /dev/kvm cannot be used.
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmu_model import load_scenario  # noqa: E402
from mmu_model.probe import kvm_api  # noqa: E402
from mmu_model.probe.probe import CannotRun, probe, random_scenarios  # noqa: E402


def library():
    return sorted((ROOT / "mmu_model" / "scenarios").rglob("*.json")) or \
        sorted((ROOT / "scenarios").rglob("*.json"))


def run_set(kvm, scenarios, tracer=None):
    out = collections.Counter()
    refused = collections.Counter()
    for sc in scenarios:
        try:
            t = time.perf_counter()
            doc = probe(sc, kvm=kvm, tracer=tracer)
            out["wall"] += time.perf_counter() - t
        except CannotRun as err:
            refused[err.kind] += 1
            out["refused"] += 1
            continue
        tot = doc["totals"]
        out["probed"] += 1
        out["agreeing_scenarios"] += doc["agree"]
        out["steps"] += tot["run"]
        out["agree"] += tot["agree"]
        out["disagree"] += tot["disagree"]
        out["kvm"] += tot["kvm_seconds"]
        out["model"] += tot["model_seconds"]
    return out, refused


def report(prefix, out):
    steps = max(out["steps"], 1)
    print(f"{prefix}_probed: {out['probed']} scenarios")
    print(f"{prefix}_agreeing: {out['agreeing_scenarios']} scenarios")
    print(f"{prefix}_steps_compared: {out['steps']} steps")
    print(f"{prefix}_steps_agree: {out['agree']} steps")
    print(f"{prefix}_steps_disagree: {out['disagree']} steps")
    print(f"{prefix}_kernel_time_per_step: {1e6 * out['kvm'] / steps:,.1f} us")
    print(f"{prefix}_end_to_end_time_per_step: {1e6 * out['wall'] / steps:,.1f} us")
    print(f"{prefix}_model_time_per_step: {1e6 * out['model'] / steps:,.1f} us")
    rest = out["wall"] - out["kvm"] - out["model"]
    print(f"{prefix}_other_time_per_scenario: {1e3 * rest / max(out['probed'], 1):,.1f} ms "
          "(VM and vCPU creation and teardown, stats fds, comparison)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=200)
    ap.add_argument("--length", type=int, default=12)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--trace", action="store_true",
                    help="also the random programs with tracepoints (root; one tracing "
                         "instance for the whole set, removed afterwards)")
    a = ap.parse_args(argv)
    try:
        kvm = kvm_api.Kvm()
    except kvm_api.KvmUnavailable as err:
        print(f"bench_probe: {err}", file=sys.stderr)
        return 2
    try:
        lib = [load_scenario(p) for p in library()]
        out, refused = run_set(kvm, lib)
        print(f"library_scenarios: {len(lib)} scenarios")
        print(f"library_refused: {out['refused']} scenarios")
        for why, n in sorted(refused.items(), key=lambda kv: -kv[1]):
            print(f"library_refused[{why}]: {n} scenarios")
        report("library", out)
        rnd, _ = run_set(kvm, random_scenarios(a.seed, a.programs, a.length))
        print(f"random_programs: {a.programs} programs of {a.length} events, seed {a.seed}")
        report("random", rnd)
        traced = None
        if a.trace:
            from mmu_model.probe.trace import TraceSession, TraceUnavailable
            try:
                with TraceSession() as tracer:
                    traced, _ = run_set(kvm, random_scenarios(a.seed, a.programs, a.length), tracer)
            except TraceUnavailable as err:
                print(f"traced: skipped ({err})")
        if traced is not None:
            report("random_traced", traced)
            print(f"random_traced_root_source_compared: {traced['steps']} steps")
    finally:
        kvm.close()
    sc = ROOT / "scenarios" / "history" / "grsecurity-wp.json"
    t = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "mmu_model", "probe", str(sc)], cwd=ROOT,
                        capture_output=True).returncode
    print(f"cli_probe_grsecurity_wp_wall: {1e3 * (time.perf_counter() - t):,.0f} ms (exit {rc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
