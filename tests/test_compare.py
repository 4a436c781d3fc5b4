"""compare: the grsecurity claims of the eras issue, the command line, JSON."""
import json

from conftest import SCENARIOS
from test_cli import cli

from mmu_model import load_scenario
from mmu_model.analysis.compare import compare

GRSEC = load_scenario(SCENARIOS / "history" / "grsecurity-wp.json")


def per_run(doc, key):
    return {f"{r['era']}/{r['mode']}": [s["runs"][i][key] for s in doc["steps"]]
            for i, r in enumerate(doc["runs"])}


def test_grsecurity_tdp_one_vcpu():
    """v5.17 and v5.19 destroy and rebuild on every toggle; seed-v1 ping-pongs
    between two cached roots after the first toggle; v6.18 keeps the root and
    on VMX the WP-only writes do not even exit."""
    doc = compare(GRSEC, [(e, "tdp", "vmx") for e in ("v5.17", "v5.19", "seed-v1", "v6.18")])
    src, destroyed = per_run(doc, "root_source"), per_run(doc, "destroyed")
    for era in ("v5.17", "v5.19"):
        assert src[f"{era}/tdp"] == ["new"] * 20 and destroyed[f"{era}/tdp"] == [1] * 20
    assert src["seed-v1/tdp"] == ["new"] + ["cache"] * 19
    assert destroyed["seed-v1/tdp"] == [0] * 20
    assert per_run(doc, "intercepted")["v6.18/tdp"] == [False] * 20
    assert src["v6.18/tdp"] == ["same"] * 20
    totals = {f"{r['era']}": r["totals"] for r in doc["runs"]}
    assert totals["seed-v1"]["roots_allocated"] == 1 and totals["v5.17"]["roots_allocated"] == 20


def test_grsecurity_legacy_tdp_finds_old_root_in_hash():
    """Under tdp-legacy the freed root is found again in the hash each time."""
    doc = compare(GRSEC, [("v5.17", "tdp-legacy", "vmx"), ("v5.19", "tdp-legacy", "vmx")])
    src = per_run(doc, "root_source")
    assert src["v5.17/tdp-legacy"] == ["new"] + ["hash"] * 19    # WP=0 role built once
    assert src["v5.19/tdp-legacy"] == ["hash"] * 20              # one role for both
    assert all(d == 0 for d in per_run(doc, "destroyed")["v5.17/tdp-legacy"])


def test_compare_marks_differing_fields():
    doc = compare(GRSEC, [("v5.17", "tdp", "vmx"), ("v6.18", "tdp", "vmx")])
    assert "intercepted" in doc["steps"][0]["differs"] and "calls" in doc["steps"][0]["differs"]
    same = compare(GRSEC, [("v5.17", "shadow", "vmx"), ("v5.17", "shadow", "vmx")])
    assert all(s["differs"] == [] for s in same["steps"])


def test_compare_cli_table_and_json():
    r = cli("compare", "scenarios/history/grsecurity-wp.json", "--era", "v5.17", "--era", "v6.18",
            "--mode", "tdp", "--mode", "shadow")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("compare: grsecurity-wp   runs: v5.17/tdp/vmx, v5.17/shadow/vmx, "
                               "v6.18/tdp/vmx, v6.18/shadow/vmx")
    assert "differs:" in r.stdout and "est. cycles" in r.stdout
    r = cli("compare", "scenarios/history/grsecurity-wp.json", "--era", "seed-v1", "--era",
            "v5.17", "--json")
    doc = json.loads(r.stdout)
    assert doc["contract"] == 1 and [x["era"] for x in doc["runs"]] == ["seed-v1", "v5.17"]
    assert doc["runs"][0]["inferred"]           # seed-v1 says what is inferred
    assert len(doc["steps"]) == 20 and len(doc["steps"][0]["runs"]) == 2


def test_compare_bad_era_exits_2():
    r = cli("compare", "scenarios/init.json", "--era", "v5.17", "--era", "nope")
    assert r.returncode == 2 and r.stderr.startswith("--era: unknown era 'nope'")


def test_compare_sees_the_checker_and_prints_the_values():
    """A violation only one run has is a difference: the step is marked, the
    violation is printed, and the summary names the run and the step."""
    from mmu_model.analysis.compare import compare_table
    from mmu_model.eras import with_flush_on_reuse
    sc = load_scenario("one-space-two-pcids")
    fixed = with_flush_on_reuse(__import__("mmu_model").get_era("v6.18"))
    __import__("mmu_model").register_era(fixed)
    try:
        doc = compare(sc, [("v6.18", "shadow", "vmx"), (fixed.name, "shadow", "vmx")])
    finally:
        from mmu_model.eras import ERAS
        del ERAS[fixed.name]
    stale = [s["index"] for s in doc["steps"] if "violations" in s["differs"]]
    assert stale and all(doc["steps"][i]["runs"][0]["violations"] for i in stale)
    assert not any(doc["steps"][i]["runs"][1]["violations"] for i in stale)
    text = compare_table(doc)
    first = stale[0]
    assert "Stale translations: v6.18/shadow/vmx at step" in text
    assert f"(none in {fixed.name}/shadow/vmx)" in text
    block = text.split(f"\nstep {first} ")[1].split("\nstep ")[0]
    assert "STALE x1" in block and "violations: vcpu 0 0x401000: stale frame" in block
    # The values of a differing field outside the per-run line, and the calls' diff.
    assert "requests: KVM_REQ_LOAD_MMU_PGD   [v6.18/shadow/vmx]" in block
    assert "KVM_REQ_TLB_FLUSH_CURRENT" in block and "+   kvm_mmu_sync_roots" in block


def test_compare_shows_the_root_role_bits_that_differ():
    """v5.17's TDP root carries the guest's CR0.WP; v6.18's does not."""
    from mmu_model.analysis.compare import compare_table
    doc = compare(GRSEC, [("v5.17", "tdp", "vmx"), ("v6.18", "tdp", "vmx")])
    assert "role" in doc["steps"][0]["differs"]
    text = compare_table(doc)
    assert "role: cr0_wp=0   [v5.17/tdp/vmx]" in text and "role: cr0_wp=1   [v6.18/tdp/vmx]" in text
    assert doc["summary"].startswith("v6.18/tdp/vmx differs from v5.17/tdp/vmx in 20 of 20 steps")
    assert text.count("note: v5.17: inferred:") == 1
