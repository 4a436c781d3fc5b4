"""The decision tables of the reference (§4), row by row, on library scenarios.

Each test names the row it checks, as "§4.x <event>, <mode>: <expected>".
Section numbers refer to the project's reference notes (docs/kernel-notes.md).
"""
from conftest import run


def freed_ids(step):
    return [f["id"] for f in step["freed"]]


def test_wp_toggle_tdp_v6_18_vmx_does_not_exit():
    """§4.4 CR0.WP toggle only, PG=1, TDP: VMX+EPT no exit at all; root SAME."""
    for s in run("cr0-wp-toggle", "v6.18", "tdp"):
        assert s["intercepted"] is False and s["calls"] == []
        assert s["root_source"] == "same" and s["root"]["id"] == 1


def test_wp_toggle_tdp_v6_18_svm_only_reinits():
    """§4.4 CR0.WP toggle only, PG=1, TDP: INIT only; root SAME; no flush (SVM exits)."""
    for s in run("cr0-wp-toggle", "v6.18", "tdp", "svm"):
        assert s["intercepted"] is True
        assert "kvm_init_mmu" in s["calls"] and "kvm_mmu_reset_context" not in s["calls"]
        assert s["freed"] == [] and s["requests"] == [] and s["tlb_flushes"] == []
        assert s["root_source"] == "same" and s["root"]["id"] == 1


def test_wp_toggle_tdp_v5_17_destroys_and_rebuilds():
    """§4.1 CR0.WP toggle, PG=1, TDP: RESET; role.cr0_wp changes; 1-vCPU VM destroys
    and rebuilds the root on every toggle (the grsecurity regression)."""
    off, on = run("cr0-wp-toggle", "v5.17", "tdp")
    assert off["root"]["role"]["cr0_wp"] is False and on["root"]["role"]["cr0_wp"] is True
    assert off["destroyed"] == [1] and off["root_source"] == "new" and off["root"]["id"] == 2
    assert on["destroyed"] == [2] and on["root_source"] == "new" and on["root"]["id"] == 3


def test_wp_toggle_shadow_finds_old_root_in_hash():
    """§4.1/§4.4 CR0.WP toggle, PG=1, SP: RESET; entry HASH with the new role, so
    toggling back finds the first root again; freeing destroys nothing."""
    for era in ("v5.17", "v6.18"):
        off, on = run("cr0-wp-toggle", era, "shadow")
        assert "kvm_mmu_reset_context" in off["calls"]
        assert off["root_source"] == "new" and off["destroyed"] == []
        assert on["root_source"] == "hash" and on["root"]["id"] == 1


def test_wp_toggle_legacy_tdp_v5_17_uses_hash():
    """§4 legend: for legacy TDP read SHARED/NEW as HASH: the WP=1 root survives in the hash."""
    off, on = run("cr0-wp-toggle", "v5.17", "tdp-legacy")
    assert off["root_source"] == "new" and on["root_source"] == "hash" and on["root"]["id"] == 1
    assert off["destroyed"] == on["destroyed"] == []


def test_pg_clear_flushes_from_v5_18():
    """§4.3 CR0.PG 1->0, SP: FLUSH_GUEST + RESET; SPECIAL.  §4.1: no flush request in v5.17."""
    off_new, on_new = run("cr0-pg-off-on", "v6.18", "shadow")
    assert "KVM_REQ_TLB_FLUSH_GUEST" in off_new["requests"]
    assert off_new["root_source"] == "special" and off_new["root"]["role"]["direct"] is True
    off_old, _ = run("cr0-pg-off-on", "v5.17", "shadow")
    assert "KVM_REQ_TLB_FLUSH_GUEST" not in off_old["requests"]
    assert off_old["root_source"] == "special"
    assert on_new["root_source"] == "special" and on_new["root"]["role"]["direct"] is False


def test_pcide_on_shadow_unloads_now_from_v5_18():
    """§4.3 CR4.PCIDE 0->1, SP: UNLOAD_ALL immediately (no reset, no flush).
    §4.1 (v5.17): UNLOAD_ALL@entry via KVM_REQ_MMU_RELOAD."""
    *_, new = run("cr4-pcide-on", "v6.18", "shadow")
    assert new["requests"] == [] and len(new["freed"]) == 2
    assert new["calls"].index("kvm_mmu_unload") < new["calls"].index("vcpu_enter_guest")
    assert new["prev_roots"] == [None, None, None] and new["root_source"] == "hash"
    *_, old = run("cr4-pcide-on", "v5.17", "shadow")
    assert old["requests"] == ["KVM_REQ_MMU_RELOAD"] and len(old["freed"]) == 2
    assert old["calls"].index("kvm_mmu_unload") > old["calls"].index("vcpu_enter_guest")


def test_pcide_on_tdp_does_nothing_from_v5_18():
    """§4.3 CR4.PCIDE 0->1, TDP: nothing.  §4.1: UNLOAD_ALL@entry, SHARED/NEW."""
    *_, new = run("cr4-pcide-on", "v6.18", "tdp")
    assert new["freed"] == [] and new["requests"] == [] and new["root_source"] == "same"
    *_, old = run("cr4-pcide-on", "v5.17", "tdp")
    assert old["requests"] == ["KVM_REQ_MMU_RELOAD"] and old["root_source"] == "new"


def test_pcide_off_flushes_guest_instead_of_unloading():
    """§4.3 CR4.PCIDE 1->0: FLUSH_GUEST (no unload).  §4.1: UNLOAD_ALL@entry."""
    _, new = run("cr4-pcide-off", "v6.18", "shadow")
    assert new["requests"] == ["KVM_REQ_TLB_FLUSH_GUEST"] and new["freed"] == []
    assert new["root_source"] == "same" and new["tlb_flushes"] == ["guest"]
    _, old = run("cr4-pcide-off", "v5.17", "shadow")
    assert old["requests"] == ["KVM_REQ_MMU_RELOAD"] and len(old["freed"]) == 2


def test_pge_toggle_is_only_a_guest_flush():
    """§4.1/§4.3 CR4.PGE toggle: FLUSH_GUEST; SAME (VMX+EPT: no exit)."""
    for era in ("v5.17", "v6.18"):
        for s in run("cr4-pge-toggle", era, "shadow"):
            assert s["requests"] == ["KVM_REQ_TLB_FLUSH_GUEST"] and s["root_source"] == "same"
            assert "kvm_mmu_sync_prev_roots" in s["calls"]
        for s in run("cr4-pge-toggle", era, "tdp"):
            assert s["intercepted"] is False
        for s in run("cr4-pge-toggle", era, "tdp", "svm"):
            assert s["requests"] == ["KVM_REQ_TLB_FLUSH_GUEST"] and s["tlb_flushes"] == ["guest"]


def test_smep_on_flushes_current_from_v5_18():
    """§4.3 CR4.SMEP 0->1: RESET + FLUSH_CURRENT; 1->0: RESET.  §4.1: RESET only."""
    on, off, _, on_nowp = run("cr4-smep", "v6.18", "shadow")
    assert "KVM_REQ_TLB_FLUSH_CURRENT" in on["requests"]
    assert "KVM_REQ_TLB_FLUSH_CURRENT" not in off["requests"]
    # With CR0.WP=1 SMEP is not in the shadow root role: same page from the hash.
    assert on["root_source"] == "hash" and on["root"]["id"] == 1
    # With CR0.WP=0 it is (smep_andnot_wp): a new page.
    assert on_nowp["root"]["role"]["smep_andnot_wp"] is True and on_nowp["root_source"] == "new"
    old_on, *_ = run("cr4-smep", "v5.17", "shadow")
    assert old_on["requests"] == []


def test_pae_toggle_resets_and_flushes_current():
    """§4.3 CR4.PAE toggle: RESET + FLUSH_CURRENT; the 32-bit and PAE roots are special."""
    to_pae, back = run("cr4-pae-toggle", "v6.18", "shadow")
    assert "KVM_REQ_TLB_FLUSH_CURRENT" in to_pae["requests"]
    assert to_pae["root"]["kind"] == "special" and to_pae["root"]["role"]["has_4_byte_gpte"] is False
    assert back["root"]["role"]["has_4_byte_gpte"] is True
    old, _ = run("cr4-pae-toggle", "v5.17", "shadow")
    assert old["requests"] == ["KVM_REQ_LOAD_MMU_PGD"]   # from load_pdptrs(), no flush


def test_host_lme_write_resets_from_v5_18():
    """§4.3 EFER.LME (host) -> RESET.  §4.1: nothing (bug, fixed in v5.18).  A guest write is #GP."""
    host_new, guest_new = run("efer-lme-host", "v6.18", "shadow")
    assert "kvm_mmu_reset_context" in host_new["calls"] and host_new["fault"] is None
    host_old, _ = run("efer-lme-host", "v5.17", "shadow")
    assert "kvm_mmu_reset_context" not in host_old["calls"] and host_old["freed"] == []
    assert guest_new["fault"] == "GP"


def test_efer_nx_selects_a_new_tdp_root_before_v5_19():
    """§4.1 EFER.NX toggle, TDP: role changes -> NEW.  §4.4: RESET, entry PRESERVED."""
    off, on = run("efer-nx-toggle", "v5.17", "tdp")
    assert off["root"]["role"]["efer_nx"] is False and off["root_source"] == "new"
    off, on = run("efer-nx-toggle", "v6.18", "tdp")
    assert off["root_source"] == "preserved" and off["root"]["id"] == 1
    assert off["root"]["role"]["efer_nx"] is True


def test_cached_root_hit_with_noflush():
    """§4.1 MOV CR3, PCIDE=1, NOFLUSH=1, new: NEW_PGD only (cached root reused unsynced, unflushed)."""
    steps = run("pcid-lru", "v6.18", "shadow")
    hit = steps[3]
    assert hit["root_source"] == "cache" and hit["root"]["id"] == 1
    assert hit["requests"] == ["KVM_REQ_LOAD_MMU_PGD"] and hit["tlb_flushes"] == []
    assert [p["id"] for p in hit["prev_roots"]] == [4, 3, 2]


def test_lru_victim_is_freed_on_a_miss():
    """§3.6 rotation: on a miss with a full cache the LRU root (prev2) is freed; the
    shadow page stays in the hash and a later switch finds it there."""
    steps = run("pcid-lru", "v6.18", "shadow")
    miss = steps[4]
    assert miss["freed"] == [{"id": 2, "slot": "prev2", "pgd": "0x2001"}]
    assert miss["destroyed"] == [] and [p["id"] for p in miss["prev_roots"]] == [1, 4, 3]
    assert steps[5]["root_source"] == "hash" and steps[5]["root"]["id"] == 2


def test_mov_cr3_with_flush_frees_prev_roots_of_that_pcid():
    """§4.1 MOV CR3, PCIDE=1, NOFLUSH=0: MMU_SYNC + FLUSH_CURRENT; FREE_PREV[pcid]."""
    steps = run("pcid-flush-vs-noflush", "v6.18", "shadow")
    flush = steps[2]        # to 0x3001 (PCID 1) while 0x2001 (PCID 1) is cached
    assert flush["requests"] == ["KVM_REQ_MMU_SYNC", "KVM_REQ_TLB_FLUSH_CURRENT"]
    assert [f["pgd"] for f in flush["freed"]] == ["0x2001"]
    noflush = steps[3]      # same value with bit 63: nothing at all
    assert noflush["requests"] == [] and noflush["freed"] == [] and noflush["root_source"] == "same"


def test_mov_cr3_without_pcid_keeps_prev_roots():
    """§4.1 MOV CR3, PCIDE=0, new value: NEW_PGD, MMU_SYNC + FLUSH_CURRENT; prev kept."""
    to2, back, same = run("cr3-no-pcid", "v6.18", "shadow")
    assert back["root_source"] == "cache" and back["freed"] == []
    assert back["requests"] == ["KVM_REQ_LOAD_MMU_PGD", "KVM_REQ_MMU_SYNC", "KVM_REQ_TLB_FLUSH_CURRENT"]
    assert same["requests"] == ["KVM_REQ_MMU_SYNC", "KVM_REQ_TLB_FLUSH_CURRENT"]
    assert "kvm_mmu_new_pgd" not in same["calls"]


def test_smi_enters_an_smm_root():
    """§4.1 SMM entry: RESET x2 -> UNLOAD_ALL; SP entry SPECIAL (smm=1, PG=0);
    TDP: SHARED/NEW in address space 1."""
    _, smi, rsm = run("smi-rsm", "v6.18", "shadow")
    assert smi["calls"].count("kvm_mmu_reset_context") == 2
    assert smi["root_source"] == "special" and smi["root"]["role"]["smm"] == 1
    assert smi["prev_roots"] == [None, None, None] and len(smi["freed"]) == 2
    _, smi, _ = run("smi-rsm", "v6.18", "tdp")
    assert smi["root"]["role"]["smm"] == 1 and smi["root_source"] == "new"


def test_rsm_rebuilds_tdp_root_before_v6_4_and_reuses_it_after():
    """§4.3 RSM, TDP: UNLOAD_ALL; SHARED else NEW (rebuild).  §4.4: PRESERVED."""
    _, _, old = run("smi-rsm", "v5.17", "tdp")
    assert old["root_source"] == "new" and old["destroyed"]
    _, _, new = run("smi-rsm", "v6.18", "tdp")
    assert new["root_source"] == "preserved" and new["root"]["id"] == 1 and new["destroyed"] == []


def test_set_sregs_flushes_from_v6_6():
    """§4.4 KVM_SET_SREGS with change: RESET + FLUSH_GUEST.  §4.1: RESET, no flush req.
    An unchanged set needs no reset."""
    change, same, _ = run("set-sregs", "v6.18", "shadow")
    assert change["requests"] == ["KVM_REQ_TLB_FLUSH_GUEST"] and "kvm_mmu_reset_context" in change["calls"]
    assert "kvm_mmu_reset_context" not in same["calls"] and same["requests"] == []
    change, *_ = run("set-sregs", "v5.17", "shadow")
    assert change["requests"] == [] and "kvm_mmu_reset_context" in change["calls"]


def test_init_with_paging_on():
    """§4.3 INIT (old PG=1): FLUSH_GUEST + RESET (+ FLUSH_GUEST for INIT).  §4.1: RESET + FLUSH_GUEST."""
    (new,) = run("init", "v6.18", "shadow")
    assert "kvm_mmu_reset_context" in new["calls"] and new["registers"]["cr0"] == "0x10"
    assert new["requests"] == ["KVM_REQ_EVENT", "KVM_REQ_TLB_FLUSH_GUEST"]
    (new_tdp,) = run("init", "v6.18", "tdp")
    assert new_tdp["root_source"] == "preserved"


def test_invpcid_types():
    """§4.1 INVPCID: type 0 invalidates one address; type 1 = kvm_invalidate_pcid; 2/3 FLUSH_GUEST."""
    _, _, t0, t1, t2, t3 = run("invpcid", "v6.18", "shadow")
    assert "kvm_mmu_invpcid_gva" in t0["calls"] and t0["tlb_flushes"] == ["gva"] and t0["freed"] == []
    assert "kvm_invalidate_pcid" in t1["calls"] and [f["pgd"] for f in t1["freed"]] == ["0x2001"]
    assert t2["requests"] == t3["requests"] == ["KVM_REQ_TLB_FLUSH_GUEST"]
    for s in run("invpcid", "v6.18", "tdp")[2:]:
        assert s["intercepted"] is False


def test_illegal_writes_fault_and_change_nothing():
    """§3.8-§3.14 validity checks: each illegal write is the guest's fault; no root moves."""
    steps = run("illegal-writes", "v6.18", "shadow")
    assert [s["fault"] for s in steps] == ["GP"] * 8 + ["EINVAL", "UD"]
    for s in steps:
        assert s["freed"] == [] and s["root"]["id"] == 1 and s["registers"] == steps[0]["registers"]


def test_other_vcpu_keeps_tdp_root_alive():
    """§1.7 / §4.1 SHARED: a TDP root held by another vCPU's slot is reused, not rebuilt."""
    off, on, other = run("two-vcpus-wp", "v5.17", "tdp")
    assert off["destroyed"] == [] and on["root_source"] == "shared" and on["root"]["id"] == 1
    # vCPU 0's WP=0 root lost its only reference when it toggled back ...
    assert on["destroyed"] == [2]
    # ... so vCPU 1 making the same change must build it again.
    assert other["root_source"] == "new" and other["destroyed"] == []
