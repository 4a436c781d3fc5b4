"""The benchmark's quick version runs and prints its table (figures are
measured by ./run bench and recorded in benchmarks/RESULTS.md, never asserted
here)."""
import re
import subprocess
import sys

from conftest import ROOT


def test_quick_benchmark_prints_its_table():
    r = subprocess.run([sys.executable, "benchmarks/bench_events.py", "--quick"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("figure"))
    assert "80683d5" in lines[header] and "ratio" in lines[header]
    rows = {re.split(r"\s{2,}", line)[0]: line for line in lines[header + 1:]}
    for mode in ("shadow", "tdp"):
        for vcpus in (1, 8):
            for what in ("cli json", "cli jsonl", "model", "trace", "trace+checker"):
                assert f"{what} {mode} {vcpus} vcpu" in rows, rows.keys()
    assert any(k.startswith("peak RSS") for k in rows)
    assert "check v6.18 tdp --jobs 1" in rows
    for name, line in rows.items():         # every figure was measured: a number, not "-"
        assert re.search(r"\s[\d,.]+\s", line[len(name):]), line
