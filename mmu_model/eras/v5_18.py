"""Eras v5.18 and v5.19: what merged from the February 2022 series.

v5.18 took the groundwork of Paolo Bonzini's series (v2 patches 1-12 and 17)
and Sean Christopherson's obsolete-roots series: the fast PGD switch runs
after the MMU is initialised, with the MMU's own root role, for any guest
width (a special PAE root is freed first); TLB flushes are requested
separately from the reset (CR0.PG 1->0, CR4.PGE, PCIDE 1->0: guest flush;
CR4.PAE, SMEP 0->1: current flush); CR4.PCIDE 0->1 unloads directly, and only
under shadow paging; EFER.LME joins EFER.NX as a reset trigger;
KVM_REQ_MMU_RELOAD is gone.  kvm_mmu_reset_context() still unloads every
root, and the TDP root role still carries the guest's CR0.WP and EFER.NX.

v5.19 split cpu_role from root_role: the TDP root role no longer depends on
CR0/CR4/EFER, so those writes never need a different TDP root - but the reset
still throws the root away, and a 1-vCPU VM still rebuilds it.
"""
from __future__ import annotations

from dataclasses import replace

from ..kernel.registers import X86_CR0_PG
from ..kernel.requests import KVM_REQ, kvm_make_request
from . import v5_17
from .v5_17 import PAGE_ROLE_FIELDS_V5
from .v6_18 import KVM_MMU_EFER_ROLE_BITS, V6_18

PAGE_ROLE_FIELDS_V5_19 = tuple(f for f in V6_18.page_role_fields if f != "is_mirror")

# Names used in v5.18 .. v6.3 where the core uses later ones: v5.17's, except
# that the cache searches and the obsolete-roots function now exist under
# their core names, and SVM's flush callbacks were renamed.
NAMES_V5_18 = {
    **{k: v for k, v in v5_17.V5_17.names.items()
       if not k.startswith("svm:") and k not in ("kvm_mmu_free_obsolete_roots",
                                                 "cached_root_find_and_keep_current",
                                                 "cached_root_find_without_current")},
    # 5.18 renamed svm_flush_tlb() to svm_flush_tlb_current() (4d9c83f5a06a);
    # svm_flush_tlb_asid() for guest flushes arrived in 6.3.
    "svm:flush_tlb_current": "svm_flush_tlb_current",
    "svm:flush_tlb_guest": "svm_flush_tlb_current",
    "svm:flush_tlb_all": "svm_flush_tlb_current",
}


def kvm_post_set_cr0(vcpu, old_cr0, cr0):
    """CR0.PG 1->0 requests a guest TLB flush; a PG or WP change resets.

    Mirrors: arch/x86/kvm/x86.c: kvm_post_set_cr0() (v5.18 .. v6.3;
    b5f61c035d49 "KVM: x86: flush TLB separately from MMU reset")
    """
    if (cr0 ^ old_cr0) & X86_CR0_PG and not cr0 & X86_CR0_PG:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    if (cr0 ^ old_cr0) & vcpu.kvm.era.cr0_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)


# kvm_mmu_reload() did not check KVM_REQ_MMU_FREE_OBSOLETE_ROOTS yet.
kvm_mmu_reload = v5_17.kvm_mmu_reload


V5_18 = replace(
    V6_18,
    name="v5.18",
    kernel="v5.18",
    summary=("flushes requested separately from the reset; cache lookup after init for any "
             "guest width; PCIDE 0->1 unloads only under shadow paging; the reset still "
             "unloads all roots and the TDP role still carries guest CR0.WP/EFER.NX"),
    sources=("read in torvalds/linux at 5.18-rc commits (x86.c 423ecfea, mmu/mmu.c b28cb0cd)",
             "b5f61c035d49 KVM: x86: flush TLB separately from MMU reset "
             "<20220217210340.312449-18-pbonzini@redhat.com>",
             "3cffc89d9d07 KVM: x86/mmu: load new PGD after the shadow MMU is initialized",
             "d2e5f3334169 KVM: x86/mmu: Always use current mmu's role when loading new PGD",
             "5499ea73e7db KVM: x86/mmu: look for a cached PGD when going from 32-bit to 64-bit",
             "f6d0a2521ce1 KVM: x86: Invoke kvm_mmu_unload() directly on CR4.PCIDE change",
             "e65a3b46b5b1 KVM: Drop KVM_REQ_MMU_RELOAD"),
    inferred=None,
    calc_roles=v5_17.calc_roles,
    page_role_fields=PAGE_ROLE_FIELDS_V5,
    cpu_role_name="mmu_role",
    efer_role_bits=KVM_MMU_EFER_ROLE_BITS,
    cr0_guest_owned_with_ept=0,
    tdp_mmu_owns_roots=False,
    sregs_flush_guest=False,
    reset_flushes_on_pg=True,
    overrides={"kvm_post_set_cr0": kvm_post_set_cr0, "kvm_mmu_reload": kvm_mmu_reload},
    names=NAMES_V5_18,
)

V5_19 = replace(
    V5_18,
    name="v5.19",
    kernel="v5.19 .. v6.3",
    summary=("cpu_role split from root_role: CR0/CR4/EFER writes never change the TDP root "
             "role, but the reset still unloads it (1 vCPU: rebuilt every time)"),
    sources=("e5ed0fb01004 KVM: x86/mmu: split cpu_role from mmu_role",
             "2ba676774dfc KVM: x86/mmu: cleanup computation of MMU roles for two-dimensional paging",
             "7a458f0e1ba1 KVM: x86/mmu: remove extended bits from mmu_role, rename field",
             "<20220414074000.31438-1-pbonzini@redhat.com>"),
    inferred=None,
    calc_roles=V6_18.calc_roles,
    page_role_fields=PAGE_ROLE_FIELDS_V5_19,
    cpu_role_name="cpu_role",
)
