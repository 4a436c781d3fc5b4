"""Streaming: run --json / --jsonl write what the in-memory run computes, bad
input still prints nothing, memory does not grow with the run, and --jobs
gives the answer of one process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SCENARIOS
from test_cli import cli

from mmu_model import Simulation, load_scenario, run_scenario

sys.path.insert(0, str(ROOT / "benchmarks"))
from workload import write_scenario  # noqa: E402


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """Issue 15's seeded PCID workload, 300 events on 1 and on 8 vCPUs."""
    out = {}
    for vcpus in (1, 8):
        path = tmp_path_factory.mktemp("w") / f"w{vcpus}.json"
        with open(path, "w") as f:
            write_scenario(f, 300, vcpus)
        out[vcpus] = path
    return out


def _doc(path, *flags):
    args = dict(zip(flags[::2], flags[1::2]))
    return run_scenario(load_scenario(path), args.get("--era"), args.get("--mode"), invariants=True)


@pytest.mark.parametrize("vcpus", [1, 8])
@pytest.mark.parametrize("mode", ["shadow", "tdp", "nested-tdp"])
def test_streamed_json_is_the_document_byte_for_byte(workload, vcpus, mode):
    r = cli("run", str(workload[vcpus]), "--mode", mode, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == json.dumps(_doc(workload[vcpus], "--mode", mode), indent=2) + "\n"


@pytest.mark.parametrize("name,era", [("pcid-lru", "v6.18"), ("smi-rsm", "seed-v1"),
                                      ("nested/nested-invept", "v5.17"), ("cr0-wp-toggle", "v5.15")])
def test_streamed_json_of_library_scenarios(name, era):
    """Eras with an ``inferred`` note (written after the totals) included."""
    path = SCENARIOS / f"{name}.json"
    r = cli("run", str(path), "--era", era, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == json.dumps(_doc(path, "--era", era), indent=2) + "\n"


def test_jsonl_is_the_head_each_step_then_the_totals():
    path = SCENARIOS / "smi-rsm.json"
    r = cli("run", str(path), "--era", "seed-v1", "--jsonl")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    doc = _doc(path, "--era", "seed-v1")
    assert [json.loads(line) for line in lines] == (
        [{k: doc[k] for k in ("contract", "scenario", "era", "mode", "vendor", "vcpus")}]
        + doc["steps"] + [{"totals": doc["totals"], "inferred": doc["inferred"]}])
    assert all(" " not in line.split('"reason"')[0][:20] for line in lines)    # compact


@pytest.mark.parametrize("events,message", [
    ('[{"op": "mov_cr3", "value": "0x1000"}, {"op": "mov_cr9"}]', "events[1].op: unknown op"),
    ('[{"op": "smi", "vcpu": 2}]', "events[0].vcpu: vCPU 2 does not exist"),
    ('[{"op": "vmexit"}]', "events[0].op: vmexit is L1 running L2"),
    ('[{"op": "smi"}', "not valid JSON"),
])
@pytest.mark.parametrize("fmt", ["--json", "--jsonl"])
def test_bad_input_prints_nothing_and_names_the_place(tmp_path, events, message, fmt):
    # The vCPU count comes after the events: the stream reader must wait for it.
    path = tmp_path / "bad.json"
    path.write_text('{"name": "bad", "events": ' + events + ', "vcpus": 2}')
    r = cli("run", str(path), fmt)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    table = cli("run", str(path))           # the table's path words it the same
    assert table.returncode == 2 and table.stderr == r.stderr


def test_a_reader_that_goes_away_ends_it_quietly(workload):
    p = subprocess.Popen([sys.executable, "-m", "mmu_model", "run", str(workload[8]), "--jsonl"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    _out, err = p.communicate(timeout=120)
    assert err == b"", err.decode()


def test_a_streamed_run_keeps_nothing_per_step(workload):
    sc = load_scenario(workload[8])
    sim = Simulation("v6.18", "shadow", "vmx", sc.vcpus, sc.start, keep=False)
    for ev in sc.events:
        sim.step(ev)
    assert sim.outcomes == []
    assert len(sim.trace.names) < 100           # only the last step's calls


@pytest.mark.parametrize("mode", ["tdp", "nested-tdp"])
def test_the_quiet_path_gives_the_full_paths_outcomes(workload, mode):
    """Without the checker, steps that do not exit skip the StepLog; with the
    quiet path turned off they give the same outcomes."""
    sc = load_scenario(workload[8])
    quiet = Simulation("v6.18", mode, "vmx", sc.vcpus, sc.start, check=False)
    full = Simulation("v6.18", mode, "vmx", sc.vcpus, sc.start, check=False)
    full._quiet = False
    a, b = quiet.run(sc.events), full.run(sc.events)
    assert sum(not s["intercepted"] for s in a) > 100        # the path is taken
    assert a == b and quiet.totals() == full.totals()


@pytest.mark.parametrize("kw", [
    {"era": "v6.18~no-pcide-unload", "mode": "shadow", "examples": 400},
    {"era": "v6.18~no-pcide-unload", "mode": "shadow", "examples": 400, "baseline": "v6.18",
     "seed": 3},
    {"era": "v6.18", "mode": "shadow", "examples": 120, "baseline": "v6.18"},   # all excused
])
def test_the_search_gives_one_processes_answer_with_more_jobs(kw):
    from mmu_model.analysis.search import find_violation
    one = find_violation(**kw)
    assert find_violation(**kw, jobs=2) == one
    assert find_violation(**kw, jobs=3) == one


def test_ablation_rows_are_the_same_with_more_jobs():
    from mmu_model.analysis.ablate import ablation_table
    one = ablation_table("seed-v1", ("shadow", "tdp"), "vmx", 40)
    assert any(r["violation"] for r in one)
    assert ablation_table("seed-v1", ("shadow", "tdp"), "vmx", 40, jobs=2) == one


def test_check_cli_jobs():
    args = ("check", "--era", "v6.18~no-pcide-unload", "--mode", "shadow", "--examples", "400")
    one, two = cli(*args, "--jobs", "1"), cli(*args, "--jobs", "2")
    assert one.returncode == two.returncode == 1 and one.stdout == two.stdout
    # No progress when stderr is not a terminal: only the one-line verdict.
    assert two.stderr.startswith("violation found after ") and two.stderr.count("\n") == 1
    bad = cli(*args, "--jobs", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == "--jobs: expected a number from 1 to 64, got 0"
