"""LAM: the unmerged LAM v4 7/9 CR3 test as a variant, and the scenario that shows its bug."""
import json

from conftest import ROOT
from test_cli import cli

SCENARIO = "mmu_model/scenarios/lam-v4-pcid-same-tables.json"
VARIANT = ("--variants", str(ROOT / "examples" / "variant_lam_v4_cr3.py"))


def test_lam_v4_pcid_switch_on_the_same_tables_is_stale_only_under_the_variant():
    """A PCID-only MOV CR3 that raises just KVM_REQ_LOAD_MMU_PGD leaves PCID 0's
    root current under PCID 1; INVPCID(PCID 0) then finds no root to free and
    the switch back serves PCID 0 the old translation. v6.18 is clean."""
    r = cli("compare", SCENARIO, *VARIANT, "--era", "v6.18", "--era", "v6.18+lam-v4-7", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [run["violations"] for run in doc["runs"]] == [0, 2]
    back = doc["steps"][4]["runs"]
    assert back[0]["violations"] == [] and back[0]["root_source"] == "hash"
    assert back[1]["violations"] == ["vcpu 0 0x400000: stale frame 0x1002 WUX "
                                     "(expected frame 0x7000 WUX) from tlb"]
    assert doc["steps"][1]["runs"][1]["requests"] == ["KVM_REQ_LOAD_MMU_PGD"]
    assert "kvm_mmu_new_pgd" not in doc["steps"][1]["runs"][1]["calls"]
    text = cli("compare", SCENARIO, *VARIANT, "--era", "v6.18", "--era", "v6.18+lam-v4-7").stdout
    assert ("Stale translations: v6.18+lam-v4-7/shadow/vmx at steps 4-5 "
            "(none in v6.18/shadow/vmx)") in text
    assert text.splitlines()[2].startswith("v6.18+lam-v4-7/shadow/vmx differs from v6.18/shadow/vmx")


def test_the_variant_file_is_short():
    lines = (ROOT / "examples" / "variant_lam_v4_cr3.py").read_text().splitlines()
    assert len(lines) < 30          # the bound for an example variant
