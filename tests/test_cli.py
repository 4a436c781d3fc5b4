"""The command line: contract-1 JSON, readable tables, and exit 2 with one line
naming the file and the JSON path for bad input (never a traceback)."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mmu_model", *args], cwd=cwd,
                          capture_output=True, text=True)


@pytest.mark.parametrize("era", ["v5.17", "v6.18"])
@pytest.mark.parametrize("mode", ["shadow", "tdp", "tdp-legacy"])
@pytest.mark.parametrize("vendor", ["vmx", "svm"])
def test_run_json_is_contract_1(era, mode, vendor):
    r = cli("run", "scenarios/pcid-lru.json", "--era", era, "--mode", mode, "--vendor", vendor, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["contract"] == 1 and (doc["era"], doc["mode"], doc["vendor"]) == (era, mode, vendor)
    for key in ("index", "vcpu", "op", "fault", "intercepted", "calls", "requests", "freed",
                "destroyed", "root_source", "root", "prev_roots", "tlb_flushes"):
        assert all(key in s for s in doc["steps"]), key
    assert set(doc["totals"]) >= {"exits", "resets", "roots_allocated", "roots_freed",
                                  "roots_destroyed", "cache_hits", "tlb_flushes"}
    assert all(len(s["prev_roots"]) == 3 for s in doc["steps"])


def test_run_is_byte_identical_across_runs():
    a = cli("run", "scenarios/smi-rsm.json", "--json").stdout
    b = cli("run", "scenarios/smi-rsm.json", "--json").stdout
    assert a == b and a


def test_run_table_echoes_parameters():
    r = cli("run", "scenarios/cr0-wp-toggle.json", "--era", "v5.17", "--mode", "tdp", "--trace")
    assert r.returncode == 0
    assert r.stdout.startswith("scenario: cr0-wp-toggle   era: v5.17   mode: tdp   vendor: vmx")
    assert "kvm_tdp_mmu_put_root();" in r.stdout


def test_eras_lists_each_era_in_a_block_within_100_columns():
    """One block per era, its name first; every line fits 100 columns; each
    source is named by its whole commit id or Message-ID, not its first word."""
    for flags in ((), ("-v",)):
        r = cli("eras", *flags)
        assert r.returncode == 0
        assert all(len(line) <= 100 for line in r.stdout.splitlines()), flags
    blocks = cli("eras").stdout.strip().split("\n\n")
    assert [b.split()[0] for b in blocks] == ["v5.15", "v5.17", "seed-v1", "v5.18", "v5.19",
                                              "v6.4", "v6.18", "seed-v2", "review-sketch",
                                              "v6.18~no-pcide-unload"]
    assert all("defined by:" in b for b in blocks)
    seed = " ".join(blocks[2].split())
    assert "<20220209170020.1775368-13-pbonzini@redhat.com>" in seed
    assert "e65a3b46b5b1" in blocks[3] and "read," not in blocks[3]


BAD = [
    ({"events": [{"op": "mov_cr9"}]}, "events[0].op: unknown op 'mov_cr9' (expected one of: mov_cr0,"),
    ({"events": [{"op": "mov_cr0", "set": ["WP", "XX"]}]}, "events[0].set[1]: unknown CR0 bit 'XX'"),
    ({"events": [{"op": "mov_cr3"}]}, "events[0].value: missing: mov_cr3 needs 'value'"),
    ({"events": [{"op": "mov_cr3", "value": "0xzz"}]}, "events[0].value: not a number: '0xzz'"),
    ({"events": [{"op": "smi", "vcpu": 3}]}, "events[0].vcpu: vCPU 3 does not exist (the scenario has 1)"),
    ({"events": [{"op": "invlpg", "addr": 1, "adr": 2}]}, "events[0].adr: unknown field 'adr'"),
    ({"mode": "nested"},
     "mode: unknown mode 'nested' (expected one of: shadow, tdp, tdp-legacy, nested-tdp)"),
    ({"start": "longmode"}, "start: unknown preset 'longmode'"),
    ({"start": {"cr0": "0x80000001", "efer": "0x500"}}, "start: not a valid starting state"),
    ({"vcpus": 0}, "vcpus: expected an integer from 1 to 64"),
    ({"events": [{"op": "write_pte", "addr": 0, "value": 1}]},
     "events[0].cr3: missing: write_pte needs 'cr3'"),
]


@pytest.mark.parametrize("doc,message", BAD, ids=[m.split(":")[0] for _d, m in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, doc, message):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    r = cli("run", str(f))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"{f}: {message}"), r.stderr


def test_not_json_and_missing_file(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{ nope")
    r = cli("run", str(f))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "line 1" in r.stderr
    r = cli("run", str(tmp_path / "absent.json"))
    assert r.returncode == 2 and "cannot read the file" in r.stderr


def test_unknown_era_names_the_flag():
    r = cli("run", "scenarios/init.json", "--era", "v9.99")
    assert r.returncode == 2
    assert r.stderr.startswith("--era: unknown era 'v9.99' (expected one of: v5.15, v5.17")


def test_guest_fault_is_a_result_not_an_error():
    r = cli("run", "scenarios/illegal-writes.json", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["steps"][0]["fault"] == "GP"


def test_quiz_subcommand_is_seeded_and_shows_answers_with_c():
    a, b = cli("quiz", "-s", "7", "-n", "2"), cli("quiz", "-s", "7", "-n", "2")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith("ARG seed 7")
    c = cli("quiz", "-s", "7", "-n", "2", "-c")
    assert "kernel calls" in c.stdout and "kernel calls" not in a.stdout
    assert cli("quiz", "-s", "7", "-n", "0").returncode == 2
