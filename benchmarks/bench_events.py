"""Throughput and memory, this tree beside commit 80683d5, on one seeded workload.

The workload (benchmarks/workload.py): MOV CR3 among 8 PCIDs with and without
the no-flush bit, CR0.WP and CR4.PGE toggles, INVPCID, INVLPG and SMI/RSM, on
1 and on 8 vCPUs.  Every figure is run for this tree and for 80683d5 (its
files taken with `git archive` into a temporary folder), one after the other,
and printed side by side with the ratio.  Usage:

    ./run bench                         # 100,000 events; 1,000,000 for the memory row
    .venv/bin/python benchmarks/bench_events.py --quick      # CI: small, no 80683d5

Rates are events (or programs) per second of CPU time of the process that did
the work, so that other load on a shared machine counts less; the wall-clock
seconds are printed beside them.  `check` rows are wall-clock (they measure
using several cores).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from workload import write_scenario  # noqa: E402

BASELINE = "80683d5"


def baseline_tree(where: Path) -> Path | None:
    """80683d5's files in ``where`` (None if git cannot give them)."""
    try:
        data = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE], check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=data, check=True)
    return where


def run_child(cmd, cwd, out=subprocess.DEVNULL, timeout=None):
    """(exit status, CPU seconds, wall seconds, peak RSS in MiB) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.PIPE)
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            p.returncode = -9
            return None, None, timeout, None
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    return (p.returncode, ru.ru_utime + ru.ru_stime, time.perf_counter() - t0,
            ru.ru_maxrss / 1024)


def cli(tree, scenario, mode, fmt, timeout=None):
    return run_child([sys.executable, "-m", "mmu_model", "run", str(scenario), "--mode", mode,
                      fmt], tree, timeout=timeout)


def in_process(tree, scenario, mode, what):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "_measure.py"), str(tree),
                        str(scenario), mode, what], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def check_rate(tree, jobs, examples):
    cmd = [sys.executable, "-m", "mmu_model", "check", "--era", "v6.18", "--mode", "tdp",
           "--examples", str(examples)]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    status, _cpu, wall, _rss = run_child(cmd, tree)
    return examples / wall if status == 0 else None


class Table:
    """Rows printed as they are measured (a long run shows its progress)."""
    WIDTH = 42

    def __init__(self):
        print(f"{'figure':<{self.WIDTH}}  {'unit':<9} {'this tree':>12} {BASELINE:>12} "
              f"{'ratio':>8}  note", flush=True)

    def add(self, name, unit, new, base=None, note=""):
        def fmt(v):
            return "-" if v is None else (f"{v:,.1f}" if unit == "MiB" else f"{v:,.0f}")
        ratio = "-"
        if new is not None and base:
            ratio = f"/{base / new:.1f}" if unit == "MiB" else f"x{new / base:.2f}"
        print(f"{name:<{self.WIDTH}}  {unit:<9} {fmt(new):>12} {fmt(base):>12} {ratio:>8}  {note}",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=1_000_000, help="events for the memory row")
    ap.add_argument("--check-examples", type=int, default=400)
    ap.add_argument("--quick", action="store_true",
                    help="small counts and no 80683d5 columns (what CI runs)")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.big, args.check_examples, args.no_baseline = 2000, 5000, 20, True
    tmp = Path(tempfile.mkdtemp(prefix="mmu-bench-"))
    try:
        base = None if args.no_baseline else baseline_tree(tmp / "base")
        if not args.no_baseline and base is None:
            print(f"note: git cannot give {BASELINE}; its columns are empty", file=sys.stderr)
        return _run(args, tmp, base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp, base) -> int:
    jobs = os.cpu_count() or 1
    print(f"workload: benchmarks/workload.py, seed 1, {args.events:,} events "
          f"(memory row: {args.big:,}); cores: {jobs}; load average at start: "
          f"{os.getloadavg()[0]:.1f}")
    print("rates: per CPU-second of the working process (wall seconds in the note); "
          "check: programs per wall-clock second")
    t = Table()
    files = {}
    for vcpus in (1, 8):
        files[vcpus] = tmp / f"w-{vcpus}.json"
        with open(files[vcpus], "w") as f:
            write_scenario(f, args.events, vcpus)
    # The CLI end to end, default options.
    for mode in ("shadow", "tdp"):
        for vcpus in (1, 8):
            base_json = None
            for fmt in ("--json", "--jsonl"):
                status, cpu, wall, _rss = cli(ROOT, files[vcpus], mode, fmt)
                new = args.events / cpu if status == 0 else None
                b, note = None, f"{wall:.1f} s wall"
                if base is not None:
                    if base_json is None:       # 80683d5 has no --jsonl: its --json for both
                        bs, bcpu, bwall, _ = cli(base, files[vcpus], mode, "--json")
                        base_json = (args.events / bcpu if bs == 0 else None, bwall)
                    b = base_json[0]
                    note += f"; 80683d5 {base_json[1]:.1f} s wall" + (
                        " (its --json: it has no --jsonl)" if fmt == "--jsonl" else "")
                t.add(f"cli {fmt[2:]} {mode} {vcpus} vcpu", "events/s", new, b, note)
    # In process: the model alone, with the trace, with trace and checker.
    for mode in ("shadow", "tdp"):
        for vcpus in (1, 8):
            for what in ("model", "trace", "trace+checker"):
                r = in_process(ROOT, files[vcpus], mode, what)
                b = in_process(base, files[vcpus], mode, what) if base is not None else None
                t.add(f"{what} {mode} {vcpus} vcpu", "events/s", r["events"] / r["cpu"],
                      b and b["events"] / b["cpu"],
                      f"{r['wall']:.1f} s wall" + (f"; 80683d5 {b['wall']:.1f} s" if b else ""))
    # Peak memory through the CLI.
    for n in (args.events, args.big):
        path = files[1] if n == args.events else tmp / "w-big.json"
        if n != args.events:
            with open(path, "w") as f:
                write_scenario(f, n, 1)
        status, cpu, wall, rss = cli(ROOT, path, "shadow", "--json")
        b, note = None, f"{wall:.1f} s wall, {cpu:.1f} s CPU"
        if base is not None and n == args.events:
            bs, _c, bwall, brss = cli(base, path, "shadow", "--json")
            b = brss if bs == 0 else None
            note += f"; 80683d5 {bwall:.1f} s wall"
        elif base is not None:
            note += "; 80683d5 not run (it did not finish 1,000,000 in 300 s: issue 15)"
        t.add(f"peak RSS cli --json shadow {n:,} events", "MiB", rss if status == 0 else None,
              b, note)
    # The search: programs per second with one job and with every core.
    one = check_rate(ROOT, 1, args.check_examples)
    all_ = check_rate(ROOT, jobs, args.check_examples)
    b = check_rate(base, None, args.check_examples) if base is not None else None
    t.add("check v6.18 tdp --jobs 1", "progs/s", one, b)
    t.add(f"check v6.18 tdp --jobs {jobs}", "progs/s", all_, b,
          f"x{all_ / one:.2f} of --jobs 1" if one and all_ else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
