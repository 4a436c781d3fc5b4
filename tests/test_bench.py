"""The benchmark's quick version runs and prints `name: value unit` lines
(figures are measured by ./run bench, never asserted here)."""
import re
import subprocess
import sys

from conftest import ROOT


def test_quick_benchmark_prints_figures():
    r = subprocess.run([sys.executable, "benchmarks/bench_events.py", "--events", "2000"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert all(re.fullmatch(r"[a-z0-9_.]+: [\d,.]+ [A-Za-z/]+", line) for line in lines), lines
    names = {line.split(":")[0] for line in lines}
    assert {"v6.18_shadow_trace_off_rate", "v6.18_shadow_trace_on_rate",
            "v6.18_shadow_trace_on_peak_memory"} <= names
