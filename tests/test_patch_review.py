"""review: a variant against its base over the library and a search (issue: the reviewer's bench)."""
import runpy

import pytest
from conftest import ROOT
from test_cli import cli

from mmu_model.analysis.patch import review, review_text
from mmu_model.eras import ERAS

EXAMPLES = ROOT / "examples"


@pytest.fixture
def variants():
    """Register the example variants for one test, then forget them."""
    before = set(ERAS)
    for path in ("variant_efer_lme_reset.py", "variant_wp_backport_5_15.py"):
        runpy.run_path(str(EXAMPLES / path))
    yield
    for name in set(ERAS) - before:
        del ERAS[name]


def test_wp_backport_on_v5_15_breaks_the_role_invariant(variants):
    """Before the cpu_role/root_role split the TDP root's role carries CR0.WP, so
    re-initing without an unload keeps a root built for another role; the
    library shows it, the coverage counts the replaced function, and the
    base has no such break."""
    doc = review("v5.15+01b31714bd90", modes=("tdp",), examples=50)
    assert doc["baseline"] == "v5.15" and doc["changes"]["functions"] == ["kvm_post_set_cr0"]
    reached = doc["coverage"]["library"]["kvm_post_set_cr0"]
    assert reached["calls"] > 0 and reached["by_event"]["mov_cr0"] > 0
    breaks = doc["library"]["invariant_breaks"]
    assert breaks and {b["side"] for b in breaks} == {"variant"}
    assert any("cr0-wp-toggle" == b["scenario"] and "built for another role" in b["problem"]
               for b in breaks)
    step0 = next(d for d in doc["library"]["differences"]
                 if d["scenario"] == "cr0-wp-toggle" and d["step"] == 0)
    assert step0["base"]["role"] == {"cr0_wp": False} and step0["variant"]["role"] == {"cr0_wp": True}
    text = review_text(doc)
    assert "coverage:\n  kvm_post_set_cr0:" in text and "invariant breaks: " in text


def test_efer_lme_patch_is_one_field_and_shows_on_the_host_write(variants):
    doc = review("v5.17+d6174299365d", modes=("shadow",), examples=30)
    assert doc["changes"] == {"functions": [], "fields": ["efer_role_bits"]}
    steps = [d for d in doc["library"]["differences"] if d["scenario"] == "efer-lme-host"]
    assert steps and all("calls" in d["fields"] for d in steps)
    assert not doc["library"]["invariant_breaks"]


def test_review_finds_the_violation_only_the_variant_has():
    """v6.18 without the PCIDE 0->1 unload: the search in shadow mode finds a
    stale translation the base does not show, with its shortest program."""
    doc = review("v6.18~no-pcide-unload", modes=("shadow",), examples=3000)
    found = [r for r in doc["search"] if r["found"]]
    assert [r["side"] for r in found] == ["variant"]
    assert found[0]["reproduction"]["events"] and "stale" in found[0]["violation"]
    assert doc["changes"]["ablation"].startswith("kvm_post_set_cr4() without")


def test_review_command_line():
    path = str(EXAMPLES / "variant_efer_lme_reset.py")
    r = cli("review", "--variants", path, "--era", "v5.17+d6174299365d", "--mode", "shadow",
            "--examples", "20")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("review: v5.17+d6174299365d against v5.17")
    assert "changes: era fields efer_role_bits" in r.stdout
    r = cli("review", "--era", "v6.18")
    assert r.returncode == 2 and "is not a variant" in r.stderr


def _lam_cr3_program():
    from mmu_model import parse_scenario
    return parse_scenario({"name": "cr3-bit-62", "mode": "shadow", "vendor": "vmx", "vcpus": 1,
                           "start": "long-mode",
                           "events": [{"op": "mov_cr3", "value": hex(0x2000 | 1 << 62)}]})


def test_a_variant_can_replace_the_cr3_legality_predicate_and_the_trace_then_shows_it():
    """kvm_vcpu_is_legal_cr3() goes through vcpu.ops: untraced (goldens stay as
    they are) until a variant replaces it; then its replacement decides and is traced."""
    from mmu_model import get_era, run_scenario
    sc = _lam_cr3_program()
    base = run_scenario(sc, get_era("v6.18"))["steps"][0]
    assert base["fault"] == "GP" and "kvm_vcpu_is_legal_cr3" not in base["calls"]
    lax = get_era("v6.18").derive("v6.18+cr3-bit-62", "CR3 bit 62 legal",
                                  kvm_vcpu_is_legal_cr3=lambda vcpu, cr3: not (cr3 & ~(1 << 62)) >> 52)
    step = run_scenario(sc, lax)["steps"][0]
    assert step["fault"] is None and "kvm_vcpu_is_legal_cr3" in step["calls"]
    assert step["calls"].index("kvm_vcpu_is_legal_cr3") > step["calls"].index("kvm_set_cr3")


def test_a_variant_can_replace_the_canonical_check_invlpg_calls():
    from mmu_model import get_era, parse_scenario, run_scenario
    sc = parse_scenario({"name": "invlpg", "mode": "shadow", "vendor": "vmx", "vcpus": 1,
                         "start": "long-mode", "events": [{"op": "invlpg", "addr": "0x400000"}]})
    assert "is_noncanonical_address" not in run_scenario(sc, get_era("v6.18"))["steps"][0]["calls"]
    never = get_era("v6.18").derive("v6.18+all-noncanonical", "every address non-canonical",
                                    is_noncanonical_address=lambda vcpu, gva: True)
    calls = run_scenario(sc, never)["steps"][0]["calls"]
    assert "is_noncanonical_address" in calls
    assert "vmx_flush_tlb_gva" in run_scenario(sc, get_era("v6.18"))["steps"][0]["calls"]
    assert "vmx_flush_tlb_gva" not in calls      # the replaced check skips the flush


def test_ablate_takes_variants_and_uses_the_parents_decision_list():
    import json

    r = cli("ablate", "--variants", str(EXAMPLES / "variant_no_pcide_flush.py"),
            "--era", "v6.18~no-pcide-flush", "--mode", "shadow", "--examples", "5", "--json")
    assert r.returncode == 0, r.stderr
    base = cli("ablate", "--era", "v6.18", "--mode", "shadow", "--examples", "5", "--json")
    assert [x["decision"] for x in json.loads(r.stdout)] == [x["decision"] for x in json.loads(base.stdout)]
    r = cli("ablate", "--era", "v6.18~no-pcide-flush", "--examples", "5")
    assert r.returncode == 2 and r.stdout == "" and "v6.18~no-pcide-flush" in r.stderr
