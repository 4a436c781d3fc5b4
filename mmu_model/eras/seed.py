"""The seed series and the review around it: behaviours that were posted but
never merged.

* ``seed-v1`` - "KVM: MMU: do not unload MMU roots on all role changes" v1
  (9 Feb 2022) with patch 12/12 applied: kvm_mmu_reset_context() re-inits the
  MMU and looks the current CR3 up in the root cache instead of unloading.
* ``seed-v2`` - v2 patches 16/18 and 18/18 (17 Feb 2022): the lookup is
  deferred to the next VM entry through a new KVM_REQ_MMU_UPDATE_ROOT.
* ``review-sketch`` - Sean Christopherson's counter-proposal in the review
  (11 Feb 2022): keep kvm_mmu_reset_context() for SMM, KVM_SET_SREGS and the
  rest; give the CR0/CR4 paths a helper that re-inits and looks up CR3; request
  TLB flushes from the architectural rules instead of relying on the reset.
"""
from __future__ import annotations

from dataclasses import replace

from ..kernel import mmu, x86
from ..kernel.registers import EFER_LME, EFER_NX, X86_CR0_PG, X86_CR4_PCIDE, X86_CR4_PGE, X86_CR4_SMEP
from ..kernel.requests import KVM_REQ, kvm_make_request
from .v5_17 import V5_17
from .v5_18 import V5_18

# ---------------------------------------------------------------------------
# seed-v1

def kvm_mmu_reset_context_v1(vcpu):
    """Re-init the MMU and look the current CR3 up in the root cache; no unload.

    Mirrors: v1 12/12 <20220209170020.1775368-13-pbonzini@redhat.com>:
    kvm_mmu_reset_context() (never merged)
    """
    vcpu.kvm.step.resets += 1
    vcpu.ops.kvm_init_mmu(vcpu)
    vcpu.ops.kvm_mmu_new_pgd(vcpu, vcpu.cr3)


def kvm_post_set_cr0_v1(vcpu, old_cr0, cr0):
    """On a role change, unload everything first if CR0.PG went 1->0 (so a later
    no-flush MOV CR3 cannot reuse a stale root), then reset without unloading.

    Mirrors: v1 12/12: kvm_post_set_cr0() (never merged)
    """
    if (cr0 ^ old_cr0) & vcpu.kvm.era.cr0_role_bits:
        if old_cr0 & X86_CR0_PG and not cr0 & X86_CR0_PG:
            vcpu.ops.kvm_mmu_unload(vcpu)
        vcpu.ops.kvm_mmu_reset_context(vcpu)


def kvm_post_set_cr4_v1(vcpu, old_cr4, cr4):
    """A role-bit change resets (and SMEP 0->1 flushes the guest TLB); otherwise a
    PCIDE change unloads at the next entry; otherwise a PGE change flushes.

    The review found that a PGE or PCIDE change in the same write as a role
    bit is dropped, and that a CR4.PAE change loses its current-PCID flush.
    Mirrors: v1 12/12: kvm_post_set_cr4() (never merged)
    """
    changed = cr4 ^ old_cr4
    if changed & vcpu.kvm.era.cr4_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)
        if cr4 & X86_CR4_SMEP and not old_cr4 & X86_CR4_SMEP:
            kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    elif changed & X86_CR4_PCIDE:
        kvm_make_request(KVM_REQ.MMU_RELOAD, vcpu)
    elif changed & X86_CR4_PGE:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)


def kvm_vcpu_reset_v1(vcpu, init_event):
    """INIT: with paging on, unload and re-init (no lookup: CR3 is 0 now).

    Mirrors: v1 12/12: kvm_vcpu_reset() (never merged)
    """
    from ..kernel.registers import X86_CR0_CD, X86_CR0_ET, X86_CR0_NW
    ops = vcpu.ops
    old_cr0 = vcpu.cr0
    vcpu.smi_pending = False
    ops.set_cr0(vcpu, X86_CR0_ET | (old_cr0 & (X86_CR0_NW | X86_CR0_CD) if init_event
                                    else X86_CR0_NW | X86_CR0_CD))
    ops.set_cr4(vcpu, 0)
    ops.set_efer_vendor(vcpu, 0)
    vcpu.cr3 = 0
    if old_cr0 & X86_CR0_PG:
        ops.kvm_mmu_unload(vcpu)
        ops.kvm_init_mmu(vcpu)
    if init_event:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)


_V1_INFERRED = ("the base tree (kvm/queue during v5.18 development) is taken to be v5.17 plus "
                "the series' patches 1-11; its TDP root role still carries guest CR0.WP/EFER.NX "
                "because the cpu_role/root_role split came later")

# v1 patches 1-11 reworked the fast switch to run after the MMU is set up
# (what merged in v5.18), nested paths included (3cffc89d9d07).
_V5_17_FAST_SWITCH = ("kvm_mmu_new_pgd", "__kvm_mmu_new_pgd", "fast_pgd_switch",
                      "cached_root_available", "kvm_init_shadow_ept_mmu", "kvm_init_shadow_npt_mmu",
                      "nested_vmx_load_cr3")

SEED_V1 = replace(
    V5_17,
    name="seed-v1",
    kernel="unmerged, 2022-02-09",
    summary=("kvm_mmu_reset_context() re-inits and looks the current CR3 up in the root cache "
             "instead of unloading; CR0.PG 1->0 unloads explicitly"),
    sources=("<20220209170020.1775368-1-pbonzini@redhat.com>",
             "<20220209170020.1775368-13-pbonzini@redhat.com>",
             "<29e1edc7-9f9f-0663-997f-3416269b6a89@redhat.com>"),
    inferred=_V1_INFERRED,
    nested_inferred=("under nested EPT/NPT the reset's kvm_mmu_new_pgd(vcpu->arch.cr3) runs on "
                     "guest_mmu with L2's CR3, not the EPTP; the model follows the code as posted "
                     "(a miss that pushes the EPT root into prev_roots; a hit if the CR3 equals a "
                     "cached EPTP) - the review asked what makes this correct and got 'nothing'"),
    merged=False,
    efer_role_bits=int(EFER_LME | EFER_NX),
    overrides={**{k: v for k, v in V5_17.overrides.items() if k not in _V5_17_FAST_SWITCH},
               "kvm_mmu_reset_context": kvm_mmu_reset_context_v1,
               "kvm_post_set_cr0": kvm_post_set_cr0_v1,
               "kvm_post_set_cr4": kvm_post_set_cr4_v1,
               "kvm_vcpu_reset": kvm_vcpu_reset_v1},
    # v1 08/12-09/12 named the two cache searches differently from what merged.
    names={**V5_17.names, "cached_root_find_and_keep_current": "cached_root_find_and_promote",
           "cached_root_find_without_current": "cached_root_find_and_replace"},
)


# ---------------------------------------------------------------------------
# seed-v2

def kvm_mmu_reset_context_v2(vcpu):
    """Re-init the MMU and defer the root lookup to the next VM entry.

    Mirrors: v2 18/18 <20220217210340.312449-19-pbonzini@redhat.com>:
    kvm_mmu_reset_context() (never merged)
    """
    vcpu.kvm.step.resets += 1
    vcpu.ops.kvm_init_mmu(vcpu)
    kvm_make_request(KVM_REQ.MMU_UPDATE_ROOT, vcpu)


def kvm_mmu_update_root(vcpu):
    """Look the guest's current pgd up in the root cache (the new request's work).

    Mirrors: v2 15/18-16/18 <20220217210340.312449-17-pbonzini@redhat.com>:
    kvm_mmu_update_root() (never merged)
    """
    vcpu.ops.kvm_mmu_new_pgd(vcpu, vcpu.cr3)


def kvm_set_cr3_v2(vcpu, cr3):
    """As kvm_set_cr3(), but a changed CR3 raises KVM_REQ_MMU_UPDATE_ROOT
    instead of switching roots at once.

    Mirrors: v2 16/18 <20220217210340.312449-17-pbonzini@redhat.com>:
    kvm_set_cr3() (never merged)
    """
    from ..kernel.registers import GUEST_MAXPHYADDR, X86_CR3_PCID_MASK, X86_CR3_PCID_NOFLUSH
    from ..kernel.x86 import is_pae_paging, kvm_vcpu_is_legal_cr3
    ops = vcpu.ops
    skip_tlb_flush, pcid = False, 0
    if vcpu.cr4 & X86_CR4_PCIDE:
        skip_tlb_flush = bool(cr3 & X86_CR3_PCID_NOFLUSH)
        cr3 &= ~X86_CR3_PCID_NOFLUSH
        pcid = cr3 & X86_CR3_PCID_MASK
    if not (cr3 == vcpu.cr3 and not is_pae_paging(vcpu)):
        if not kvm_vcpu_is_legal_cr3(vcpu, cr3):
            return f"CR3 value {cr3:#x} sets bits above MAXPHYADDR ({GUEST_MAXPHYADDR})"
        if is_pae_paging(vcpu) and not ops.load_pdptrs(vcpu, cr3):
            return "the PAE PDPTEs are invalid"
        if cr3 != vcpu.cr3:
            kvm_make_request(KVM_REQ.MMU_UPDATE_ROOT, vcpu)
        vcpu.cr3 = cr3
    if not skip_tlb_flush:
        ops.kvm_invalidate_pcid(vcpu, pcid)
    return 0


def kvm_post_set_cr4_v2(vcpu, old_cr4, cr4):
    """v2 17/18's rules, on a base that still had KVM_REQ_MMU_RELOAD: role bit ->
    reset; shadow paging and PCIDE 0->1 -> unload at the next entry; PGE toggle
    or PCIDE 1->0 -> guest flush; else PAE toggle or SMEP 0->1 -> current flush.

    Mirrors: v2 17/18 <20220217210340.312449-18-pbonzini@redhat.com>:
    kvm_post_set_cr4() (merged in v5.18 with a direct unload instead)
    """
    from ..kernel.registers import X86_CR4_PAE
    changed = cr4 ^ old_cr4
    if changed & vcpu.kvm.era.cr4_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)
    if not vcpu.kvm.tdp_enabled and cr4 & X86_CR4_PCIDE and not old_cr4 & X86_CR4_PCIDE:
        kvm_make_request(KVM_REQ.MMU_RELOAD, vcpu)
    if changed & X86_CR4_PGE or (not cr4 & X86_CR4_PCIDE and old_cr4 & X86_CR4_PCIDE):
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    elif changed & X86_CR4_PAE or (cr4 & X86_CR4_SMEP and not old_cr4 & X86_CR4_SMEP):
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)


def __set_sregs_v2(vcpu, sregs):
    """KVM_SET_SREGS unloads when a paging register changed, then always
    re-inits the MMU (no reset, no flush).

    Mirrors: v2 13/18 <20220217210340.312449-14-pbonzini@redhat.com>:
    __set_sregs() (never merged)
    """
    from ..kernel.x86 import is_pae_paging, kvm_is_valid_sregs
    err = kvm_is_valid_sregs(vcpu, sregs)
    if err:
        return err
    ops = vcpu.ops
    changed = any(getattr(vcpu, k) != sregs[k] for k in ("cr3", "efer", "cr0", "cr4"))
    vcpu.cr3 = sregs["cr3"]
    ops.set_efer_vendor(vcpu, sregs["efer"])
    ops.set_cr0(vcpu, sregs["cr0"])
    ops.set_cr4(vcpu, sregs["cr4"])
    if is_pae_paging(vcpu):
        ops.load_pdptrs(vcpu, vcpu.cr3)
    if changed:
        ops.kvm_mmu_unload(vcpu)
    ops.kvm_init_mmu(vcpu)
    return 0


SEED_V2 = replace(
    V5_18,
    name="seed-v2",
    kernel="unmerged, 2022-02-17",
    summary=("v2: the reset re-inits the MMU and raises KVM_REQ_MMU_UPDATE_ROOT, as does a "
             "CR3 change; the cache lookup happens at the next VM entry"),
    sources=("<20220217210340.312449-1-pbonzini@redhat.com>",
             "<20220217210340.312449-14-pbonzini@redhat.com>",
             "<20220217210340.312449-17-pbonzini@redhat.com>",
             "<20220217210340.312449-18-pbonzini@redhat.com>",
             "<20220217210340.312449-19-pbonzini@redhat.com>",
             "<YhATewkkO/l4P9UN@google.com>"),
    inferred=("the base is taken to be v5.18's merged behaviour with KVM_REQ_MMU_RELOAD "
              "still present (kvm/queue of February 2022); the TDP root role is pre-split"),
    nested_inferred=("kvm_mmu_update_root() looks L2's CR3 up in guest_mmu, as v1's reset did; "
                     "the posting did not address nested EPT/NPT"),
    merged=False,
    parent="v5.18",
    has_mmu_reload=True,
    entry_requests=((KVM_REQ.MMU_UPDATE_ROOT, "kvm_mmu_update_root"),),
    reload_clears=(KVM_REQ.MMU_UPDATE_ROOT,),
    overrides={**V5_18.overrides,
               "kvm_mmu_reset_context": kvm_mmu_reset_context_v2,
               "kvm_mmu_update_root": kvm_mmu_update_root,
               "kvm_set_cr3": kvm_set_cr3_v2,
               "kvm_post_set_cr4": kvm_post_set_cr4_v2,
               "__set_sregs": __set_sregs_v2},
)


# ---------------------------------------------------------------------------
# The reviewer's sketch

def kvm_post_set_cr_reinit_mmu(vcpu):
    """Re-init the MMU and look the current CR3 up: the CR0/CR4 paths only.

    Mirrors: the sketch in <YgavcP/jb5njjKKn@google.com> (never merged)
    """
    vcpu.kvm.step.resets += 1
    vcpu.ops.kvm_init_mmu(vcpu)
    vcpu.ops.kvm_mmu_new_pgd(vcpu, vcpu.cr3)


def kvm_post_set_cr0_sketch(vcpu, old_cr0, cr0):
    """Role change: re-init and look up CR3; CR0.PG 1->0: flush the guest TLB.

    Mirrors: the sketch in <YgavcP/jb5njjKKn@google.com> (never merged)
    """
    if (cr0 ^ old_cr0) & vcpu.kvm.era.cr0_role_bits:
        vcpu.ops.kvm_post_set_cr_reinit_mmu(vcpu)
    if old_cr0 & X86_CR0_PG and not cr0 & X86_CR0_PG:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)


def kvm_post_set_cr4_sketch(vcpu, old_cr4, cr4):
    """A PCIDE change unloads at the next entry and nothing else is needed;
    otherwise a role change re-inits and looks up CR3, and a PGE toggle or SMEP
    0->1 flushes the guest TLB.  (No current-PCID flush for a PAE change: the
    sketch has none.)

    Mirrors: the sketch in <YgavcP/jb5njjKKn@google.com> (never merged)
    """
    changed = cr4 ^ old_cr4
    if changed & X86_CR4_PCIDE:
        kvm_make_request(KVM_REQ.MMU_RELOAD, vcpu)
        return
    if changed & vcpu.kvm.era.cr4_role_bits:
        vcpu.ops.kvm_post_set_cr_reinit_mmu(vcpu)
    if changed & X86_CR4_PGE or (cr4 & X86_CR4_SMEP and not old_cr4 & X86_CR4_SMEP):
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)


REVIEW_SKETCH = SEED_V1.derive(
    "review-sketch",
    ("the reviewer's sketch: CR0/CR4 role changes re-init and look up CR3; "
     "kvm_mmu_reset_context() still unloads for SMM, SREGS and INIT; flushes follow the SDM"),
    kernel="unmerged, 2022-02-11",
    sources=("<YgavcP/jb5njjKKn@google.com>", "<YgqsU8j80M1ZpWPx@google.com>"),
    inferred=("the sketch was pseudo-code in a reply, on the v1 base; it calls the init "
              "kvm_mmu_init (taken to mean kvm_init_mmu)"),
    helpers={"kvm_post_set_cr_reinit_mmu": kvm_post_set_cr_reinit_mmu},
    kvm_mmu_reset_context=mmu.kvm_mmu_reset_context,     # unchanged: unload + init
    kvm_post_set_cr0=kvm_post_set_cr0_sketch,
    kvm_post_set_cr4=kvm_post_set_cr4_sketch,
    kvm_vcpu_reset=x86.kvm_vcpu_reset,
)
