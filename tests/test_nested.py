"""Nested TDP: L2 under L1's EPT/NPT, where L0 shadows again.

Each test names the row of docs/kernel-notes.md §9 (or the reference table's
NTDP column, §4) it checks.
"""
import json
import subprocess
import sys

import pytest
from conftest import ROOT, SCENARIOS

from mmu_model import Simulation, get_era, load_scenario, run_scenario
from mmu_model.harness.invariants import check_invariants

MERGED = ("v5.15", "v5.17", "v5.18", "v5.19", "v6.4", "v6.18")


def nested(name, era, vendor="vmx"):
    return run_scenario(load_scenario(SCENARIOS / "nested" / f"{name}.json"), era, None, vendor)


def steps(name, era, vendor="vmx"):
    return nested(name, era, vendor)["steps"]


def freed(step):
    return sorted(f["id"] for f in step["freed"])


# ---------------------------------------------------------------------------
# §9.4: L2's CR writes that L0 handles

@pytest.mark.parametrize("era", ("v5.17", "v5.18", "v5.19"))
def test_l2_wp_toggle_before_v6_4_unloads_both_contexts(era):
    """§9.4 CR0.WP toggle, up to v6.3: RESET: UNLOAD_ALL frees guest_mmu's root
    and L1's TDP root; the entry finds the shadow-EPT root in the hash; a 1-vCPU
    VM destroys L1's root, so L1 gets a new one when it runs again."""
    s = steps("nested-l2-cr0-wp-toggle", era)
    first = s[0]
    assert first["intercepted"] and "kvm_mmu_reset_context" in first["calls"]
    assert "init_kvm_nested_mmu" in first["calls"]
    assert freed(first) == [1, 2] and first["destroyed"] == [1]
    assert first["root_source"] == "hash" and first["root"]["id"] == 2
    assert first["nested"]["root_mmu"]["root"] is None
    exit_ = s[3]
    assert exit_["nested"]["level"] == "L1" and exit_["root_source"] == "new"


@pytest.mark.parametrize("era", ("v6.4", "v6.18"))
def test_l2_wp_toggle_from_v6_4_keeps_the_shadow_ept_root(era):
    """§9.4 CR0.WP toggle, v6.4+: VMX: no exit; SVM: INIT of nested_mmu only,
    guest_mmu's root SAME, nothing freed; L1's root still loaded."""
    for s in steps("nested-l2-cr0-wp-toggle", era)[:3]:
        assert not s["intercepted"] and s["calls"] == [] and s["root"]["id"] == 2
    for s in steps("nested-l2-cr0-wp-toggle", era, "svm")[:3]:
        assert s["intercepted"] and "init_kvm_nested_mmu" in s["calls"]
        assert "kvm_mmu_reset_context" not in s["calls"] and s["freed"] == []
        assert s["root_source"] == "same" and s["root"]["id"] == 2
        assert s["nested"]["root_mmu"]["root"]["id"] == 1


def test_l2_pcide_on_reloads_only_in_v5_17():
    """§9.4 CR4.PCIDE 0->1: v5.17 KVM_REQ_MMU_RELOAD (both contexts unloaded at
    entry); v5.18+ nothing under TDP, nested or not."""
    sc = load_scenario(SCENARIOS / "cr4-pcide-on.json")
    old = run_scenario(sc, "v5.17", "nested-tdp")["steps"]
    pcide = next(s for s in old if "KVM_REQ_MMU_RELOAD" in s["requests"])
    assert freed(pcide) and pcide["root_source"] == "hash"
    for era in ("v5.18", "v6.18"):
        new = run_scenario(sc, era, "nested-tdp")["steps"]
        assert all(s["freed"] == [] for s in new)


# ---------------------------------------------------------------------------
# §9.2: nested VM-entry and VM-exit

@pytest.mark.parametrize("era", MERGED)
def test_transitions_free_no_root_and_find_the_ept_root_again(era):
    """§9.2: neither a VM-exit nor a VM-entry frees a root; each entry finds the
    shadow-EPT root (SAME) and each exit L1's TDP root (SAME); root_mmu's root
    stays loaded while L2 runs."""
    s = steps("nested-entry-exit", era)
    for step in s[1:9]:
        assert step["freed"] == [] and step["root_source"] == "same"
        want = ("L2", 2) if step["op"] == "vmentry" else ("L1", 1)
        assert (step["nested"]["level"], step["root"]["id"]) == want
        assert step["nested"]["root_mmu"]["root"]["id"] == 1


def test_transition_flushes_follow_vpid12():
    """§9.2 transition flush: same vpid12 -> none; new vpid12 -> FLUSH_GUEST on
    entry; VPID off in vmcs12 -> FLUSH_GUEST on entry and on exit."""
    s = steps("nested-entry-exit", "v6.18")
    guest = ["KVM_REQ_TLB_FLUSH_GUEST" in x["requests"] for x in s]
    #         access vmexit vmentry vmexit vpid=2 vmexit vpid=0 vmexit vpid=2 access
    assert guest == [False, False, False, False, True, False, True, True, False, False]
    assert "nested_vmx_transition_tlb_flush" in s[2]["calls"]


def test_svm_transitions_always_sync_and_flush():
    """§9.2 SVM: every transition requests MMU_SYNC and FLUSH_CURRENT."""
    for s in steps("nested-entry-exit", "v6.18", "svm")[1:9]:
        assert {"KVM_REQ_MMU_SYNC", "KVM_REQ_TLB_FLUSH_CURRENT"} <= set(s["requests"])
        assert ("nested_svm_transition_tlb_flush" in s["calls"])


# ---------------------------------------------------------------------------
# §9.3: INVEPT, INVVPID, L1's EPT writes

def test_invept_single_frees_only_the_matching_root():
    """§9.3 INVEPT single-context frees the guest_mmu roots whose EPTP address
    matches, wherever they sit; the other EPTP's root stays cached."""
    s = steps("nested-two-eptps", "v6.18")
    entries = [x for x in s if x["op"] == "vmentry"]
    assert [x["root_source"] for x in entries[:3]] == ["new", "cache", "cache"]
    invept = s[7]
    assert [f["pgd"] for f in invept["freed"]] == ["0x5005e"]
    cached = [r["pgd"] for r in invept["nested"]["guest_mmu"]["prev_roots"] if r]
    assert invept["nested"]["guest_mmu"]["root"]["pgd"] == "0x6005e" and "0x5005e" not in cached
    assert s[8]["root_source"] == "hash"


def test_invept_makes_l2_see_l1s_new_mapping():
    """§9.3 / kvm-unit-tests 'ept' remap: before INVEPT L2 may use the old
    mapping (and does, unsync); after INVEPT single the entry reloads the root
    from the hash and syncs it; INVEPT global frees everything."""
    s = steps("nested-invept", "v6.18")
    assert s[4]["translation"]["ept"] == "L1 frame 0x101002 RWX" and s[4]["violations"] == []
    assert freed(s[6]) == [2] and s[7]["root_source"] == "hash"
    assert s[8]["translation"]["ept"] == "L1 frame 0x777 RWX"
    assert freed(s[10]) == [2] and s[10]["nested"]["guest_mmu"]["root"] is None


def test_bad_invept_and_vmentry_are_vmfail_and_change_nothing():
    """§9.3 INVEPT types other than 1 and 2, and a bad EPTP, fail (VMfail, not
    #GP) and change nothing; INVVPID with VPID 0 is only valid for type 2."""
    sim = Simulation("v6.18", "nested-tdp", "vmx", 1, "long-mode")
    sim.apply({"op": "vmexit"})
    for ev in ({"op": "invept", "type": 3}, {"op": "invept", "type": 1, "eptp": "0x50003"},
               {"op": "vmentry", "eptp": "0x5005b"}, {"op": "invvpid", "type": 1, "vpid": 0}):
        out = sim.apply(ev)
        assert out["fault"] == "VMfail" and out["freed"] == [] and out["reason"], ev
        assert out["nested"]["level"] == "L1"
    assert check_invariants(sim.kvm) == []


def test_invvpid_flushes_vpid02_and_frees_nothing():
    """§9.3 INVVPID: a hardware flush of vpid02; no root freed under nested EPT."""
    sim = Simulation("v6.18", "nested-tdp", "vmx", 1, "long-mode")
    sim.apply({"op": "vmexit"})
    out = sim.apply({"op": "invvpid", "type": 1, "vpid": 1})
    assert out["freed"] == [] and out["tlb_flushes"] == ["vpid02"]
    assert out["calls"][:2] == ["handle_invvpid", "vpid_sync_context"]


def test_ept_violation_on_a_missing_l1_entry_exits_to_l1():
    """§9.3: L1's entry not present -> the EPT violation is reflected to L1 (a
    nested VM-exit); once L1 maps it, L0 shadows the entry and L2 goes on."""
    s = steps("nested-ept-violation", "v6.18")
    assert s[3]["nested"]["level"] == "L1" and "nested_vmx_vmexit" in s[3]["calls"]
    assert "EPT violation" in s[3]["reason"]
    assert s[6]["nested"]["level"] == "L2" and s[6]["translation"]["ept"] == "L1 frame 0x888 RWX"


# ---------------------------------------------------------------------------
# §9.5: SMM and VMX operation

@pytest.mark.parametrize("vendor", ("vmx", "svm"))
def test_smi_in_l2_exits_to_l1_and_rsm_reenters(vendor):
    """§9.5 / reference §4.1 'SMM entry' NTDP: forced nested exit first, guest_mmu's
    roots freed too; 'RSM': if RSM resumes L2, guest_mmu via HASH."""
    s = steps("nested-smi-in-l2", "v6.18", vendor)
    smi, rsm = s[1], s[2]
    hook = "vmx_enter_smm" if vendor == "vmx" else "svm_enter_smm"
    assert smi["nested"]["level"] == "L1" and smi["registers"]["smm"] is True
    assert smi["calls"].index(hook) < smi["calls"].index("kvm_smm_changed")
    assert 2 in freed(smi)
    assert rsm["nested"]["level"] == "L2" and rsm["root_source"] == "hash" and rsm["root"]["id"] == 2
    assert rsm["registers"]["smm"] is False


def test_l1_cannot_clear_paging_in_vmx_operation():
    """§9.5: in VMX operation CR0.PE/PG are fixed to 1 (nested_host_cr0_valid): #GP."""
    sim = Simulation("v6.18", "nested-tdp", "vmx", 1, "long-mode")
    sim.apply({"op": "vmexit"})
    out = sim.apply({"op": "mov_cr0", "clear": ["PG"]})
    assert out["fault"] == "GP" and "VMX operation" in out["reason"]
    l2 = Simulation("v6.18", "nested-tdp", "vmx", 1, "long-mode")
    assert l2.apply({"op": "mov_cr4", "clear": ["PCIDE"]})["fault"] is None   # L2 may


# ---------------------------------------------------------------------------
# §9.6: the seed under nested TDP

def test_seed_v1_reuses_the_wrong_ept_root_when_cr3_equals_a_cached_eptp():
    """§9.6: v1's reset looks L2's CR3 up in guest_mmu; a CR3 numerically equal to
    a cached EPTP is a hit on the wrong EPT table, which the checker sees."""
    doc = nested("nested-cr3-equals-eptp", "seed-v1")
    wp = doc["steps"][6]
    assert wp["root_source"] == "cache" and wp["root"]["pgd"] == "0x5005e"
    assert wp["nested"]["eptp"] == "0x6005e"
    assert wp["violations"] and wp["violations"][0]["kind"] == "ept"
    assert "guest_mmu with L2's CR3" in doc["inferred"]
    for era in MERGED:
        assert not any(s["violations"] for s in nested("nested-cr3-equals-eptp", era)["steps"]), era


def test_a_variant_without_invept_is_caught_by_the_checker():
    """The guest-physical checker is not vacuous: if handle_invept() freed
    nothing, L2 would keep using a mapping L1 invalidated."""
    lazy = get_era("v6.18").derive("v6.18~lazy-invept", "INVEPT does nothing",
                                   handle_invept=lambda vcpu, type, eptp: 0)
    s = run_scenario(load_scenario(SCENARIOS / "nested" / "nested-invept.json"), lazy)["steps"]
    bad = [x for x in s if x["violations"]]
    assert bad and bad[0]["index"] == 7
    v = bad[0]["violations"][0]
    assert v["kind"] == "ept" and v["invalidated_by_step"] == 6 and "0x101002" in v["stale"]


# ---------------------------------------------------------------------------
# Input

def test_nested_events_need_the_nested_mode(tmp_path):
    """A nested event in a scenario of another mode is an input error naming
    the event; run with --mode on the command line it is the guest's #UD."""
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"mode": "tdp", "events": [{"op": "vmexit"}]}))
    r = subprocess.run([sys.executable, "-m", "mmu_model", "run", str(f)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "events[0].op: vmexit is L1 running L2" in r.stderr
    assert "Traceback" not in r.stderr
    doc = run_scenario(load_scenario(SCENARIOS / "nested" / "nested-invept.json"), "v6.18", "tdp")
    assert {s["fault"] for s in doc["steps"] if s["op"] != "access"} == {"UD"}


def test_library_runs_clean_as_l2_in_merged_eras():
    """Every library scenario, run as L2 under nested TDP, and every nested
    scenario: no violation in any merged era (the seed's scenario aside)."""
    paths = sorted(SCENARIOS.glob("*.json")) + sorted((SCENARIOS / "nested").glob("*.json"))
    for path in paths:
        sc = load_scenario(path)
        for era in MERGED:
            for vendor in ("vmx", "svm"):
                doc = run_scenario(sc, era, "nested-tdp", vendor)
                assert not any(s["violations"] for s in doc["steps"]), (sc.name, era, vendor)


# ---------------------------------------------------------------------------
# Review fixes: INIT in VMX root, SVM's ASID flush and shadow-NPT role

def test_init_in_vmx_root_is_held_until_l2_runs():
    """§9.5: an INIT while L1 is in VMX root operation is blocked
    (vmx_apic_init_signal_blocked): no reset, no flush, VMX operation kept.
    The next VM-entry re-evaluates it (kvm_apic_has_pending_init_or_sipi) and
    L2 exits to L1 at once - the INIT-signal VM exit."""
    sim = Simulation("v6.18", "nested-tdp", "vmx", 1, "long-mode")
    sim.apply({"op": "vmexit"})
    out = sim.apply({"op": "init"})
    assert "blocked in VMX root operation" in out["reason"]
    assert "kvm_vcpu_reset" not in out["calls"] and out["tlb_flushes"] == []
    assert out["registers"]["cr0"] == sim.outcomes[0]["registers"]["cr0"]
    assert sim.kvm.vcpus[0].vmxon and sim.kvm.vcpus[0].init_latched
    entry = sim.apply({"op": "vmentry"})
    calls = entry["calls"]
    assert calls.index("nested_vmx_enter_non_root_mode") < calls.index("kvm_apic_accept_events") \
        < calls.index("nested_vmx_vmexit")
    assert entry["nested"]["level"] == "L1" and "INIT-signal" in entry["reason"]
    assert not sim.kvm.vcpus[0].init_latched and entry["violations"] == []


def test_init_in_svm_l1_still_resets():
    """§9.5: SVM blocks INIT only while GIF is clear, which the model's L1
    never has: an INIT in L1 resets the vCPU."""
    sim = Simulation("v6.18", "nested-tdp", "svm", 1, "long-mode")
    sim.apply({"op": "vmexit"})
    out = sim.apply({"op": "init"})
    assert "kvm_vcpu_reset" in out["calls"] and out["registers"]["cr0"] == "0x10"   # ET only


def test_svm_vmrun_syncs_l1s_new_npt_entry():
    """§9.2 SVM: L1 rewrites an NPT entry and re-enters; VMRUN's MMU_SYNC
    and ASID flush (nested_svm_transition_tlb_flush) make L2 see the new
    entry - the ASID flush drops nested-paging TLB entries too.  VMX keeps
    the old one until L1's INVEPT, which the architecture allows."""
    seen = {}
    for vendor, eptp in (("svm", "0x50000"), ("vmx", "0x5005e")):
        sim = Simulation("v6.18", "nested-tdp", vendor, 1, "long-mode")
        for ev in ({"op": "access", "addr": "0x400000"}, {"op": "vmexit"},
                   {"op": "write_ept", "eptp": eptp, "gpa": "0x1002000", "value": "0x777007"},
                   {"op": "vmentry"}):
            sim.apply(ev)
        out = sim.apply({"op": "access", "addr": "0x400000"})
        assert out["violations"] == []
        seen[vendor] = (out["translation"]["ept"], out["translation"]["ept_source"])
    assert seen == {"svm": ("L1 frame 0x777 RWX", "shadow"),
                    "vmx": ("L1 frame 0x101002 RWX", "tlb")}


def test_svm_shadow_npt_role_ignores_l1s_cr0_wp():
    """§9.1: nested_svm_init_mmu_context() passes only CR0.PG to
    kvm_init_shadow_npt_mmu(); L1 toggling CR0.WP between VMRUNs keeps
    guest_mmu's role and root."""
    sim = Simulation("v6.18", "nested-tdp", "svm", 1, "long-mode")
    role = sim.kvm.vcpus[0].guest_mmu.root_role
    for ev in ({"op": "vmexit"}, {"op": "mov_cr0", "clear": ["WP"]}):
        sim.apply(ev)
    out = sim.apply({"op": "vmentry"})
    assert out["root_source"] == "same" and out["root"]["id"] == 2 and out["freed"] == []
    assert sim.kvm.vcpus[0].guest_mmu.root_role == role


def test_svm_ncr3_needs_only_a_legal_gpa():
    """§9.3 SVM: nested_vmcb_check_controls() checks nCR3 is a legal GPA, no
    more: flag bits are accepted (a different pgd, so the root comes from the
    hash); an address beyond MAXPHYADDR fails VMRUN."""
    sim = Simulation("v6.18", "nested-tdp", "svm", 1, "long-mode")
    sim.apply({"op": "vmexit"})
    out = sim.apply({"op": "vmentry", "eptp": "0x50018"})
    assert out["fault"] is None and out["root_source"] == "hash"
    sim.apply({"op": "vmexit"})
    bad = sim.apply({"op": "vmentry", "eptp": hex(1 << 52)})
    assert bad["fault"] == "VMfail" and "VMEXIT_INVALID" in bad["reason"]
    assert bad["nested"]["level"] == "L1"


def test_vmx_operation_fixes_cr0_ne():
    """§9.5: NE is a VMX fixed-1 CR0 bit too (nested_host_cr0_valid)."""
    sim = Simulation("v6.18", "nested-tdp", "vmx", 1, "long-mode")
    sim.apply({"op": "vmexit"})
    out = sim.apply({"op": "mov_cr0", "clear": ["NE"]})
    assert out["fault"] == "GP" and "CR0.NE" in out["reason"]


@pytest.mark.parametrize("vendor", ("vmx", "svm"))
def test_vm_entry_in_smm_is_ud(vendor):
    """§9.5: SMM leaves VMX operation (VMLAUNCH is #UD there) and SVM refuses
    VMRUN in SMM (nested_svm_vmrun()); nothing changes."""
    sim = Simulation("v6.18", "nested-tdp", vendor, 1, "long-mode")
    sim.apply({"op": "vmexit"})
    sim.apply({"op": "smi"})
    out = sim.apply({"op": "vmentry"})
    assert out["fault"] == "UD" and "SMM" in out["reason"] and out["nested"]["level"] == "L1"
    assert out["calls"] == [] and out["registers"]["smm"] is True


def test_svm_variant_without_the_transition_flush_is_caught():
    """The SVM search is not vacuous: without nested_svm_transition_tlb_flush()
    L1 and L2 share the ASID's entries, and the checker sees L1 use one of L2's."""
    from mmu_model.analysis.search import find_violation
    lazy = get_era("v6.18").derive("v6.18~svm-no-transition-flush", "no transition flush",
                                   nested_vmx_transition_tlb_flush=lambda vcpu, is_vmenter: None)
    found, n = find_violation(lazy, "nested-tdp", "svm", examples=200, baseline="v6.18")
    assert found is not None, f"nothing found in {n} programs"
    _start, events, (_step, violations) = found
    assert any(e["op"] in ("vmexit", "vmentry") for e in events)
    assert violations[0]["source"] == "tlb"
