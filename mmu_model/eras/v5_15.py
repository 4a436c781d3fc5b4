"""Era v5.15: before the v5.16 clean-ups of the CR4 and TLB-flush paths.

What differs from v5.17: CR4.PGE is still a role bit (toggling it resets the
MMU); CR4.PCIDE 1->0 resets and 0->1 does nothing; a guest TLB flush under
shadow paging unloads every root instead of syncing; kvm_invalidate_pcid()
has no TDP shortcut and, with PCIDs off, frees every previous root (they all
have PCID 0); load_pdptrs() does not free the current root; the page role's
gpte bit is called ``gpte_is_8_bytes``.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from ..kernel.kvm import KVM_MMU_NUM_PREV_ROOTS, KVM_MMU_ROOT_PREVIOUS
from ..kernel.registers import PAGE_SHIFT, X86_CR4_PCIDE, X86_CR4_PGE
from ..kernel.requests import KVM_REQ, kvm_make_request
from ..kernel.roles import (
    KvmCpuRole,
    RoleRegs,
    calc_mmu_role_ext,
    guest_paging_level,
    is_cr0_pg,
    is_cr4_pae,
    role_regs,
)
from . import v5_17
from .v5_17 import PAGE_ROLE_FIELDS_V5, V5_17

# mmu.h (v5.15): PGE was still a role bit (a91a7c709600 removed it in v5.16).
KVM_MMU_CR4_ROLE_BITS_V5_15 = V5_17.cr4_role_bits | X86_CR4_PGE


def kvm_post_set_cr4(vcpu, old_cr4, cr4):
    """A role-bit change (PGE included) or CR4.PCIDE 1->0 resets the MMU.

    Mirrors: arch/x86/kvm/x86.c: kvm_post_set_cr4() (v5.15)
    """
    if ((cr4 ^ old_cr4) & KVM_MMU_CR4_ROLE_BITS_V5_15
            or (not cr4 & X86_CR4_PCIDE and old_cr4 & X86_CR4_PCIDE)):
        vcpu.ops.kvm_mmu_reset_context(vcpu)


def kvm_vcpu_flush_tlb_guest(vcpu):
    """A guest TLB flush under shadow paging unloads every root: the next load
    syncs and flushes.

    Mirrors: arch/x86/kvm/x86.c: kvm_vcpu_flush_tlb_guest() (v5.15; replaced by
    a sync in v5.16, 61b05a9fd4ae)
    """
    if not vcpu.kvm.tdp_enabled:
        vcpu.ops.kvm_mmu_unload(vcpu)
        return
    vcpu.ops.flush_tlb_guest(vcpu)


def kvm_invalidate_pcid(vcpu, pcid):
    """Sync and flush the active PCID, and free every previous root with that
    PCID, which with CR4.PCIDE=0 means all of them.

    Mirrors: arch/x86/kvm/x86.c: kvm_invalidate_pcid() (v5.15; the TDP
    shortcut and the PCIDE=0 early return came in v5.16)
    """
    if vcpu.active_pcid() == pcid:
        kvm_make_request(KVM_REQ.MMU_SYNC, vcpu)
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)
    mmu = vcpu.mmu
    roots_to_free = 0
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        if vcpu.pcid(mmu.prev_roots[i].pgd) == pcid:
            roots_to_free |= KVM_MMU_ROOT_PREVIOUS(i)
    vcpu.ops.kvm_mmu_free_roots(vcpu.kvm, mmu, roots_to_free)


def load_pdptrs(vcpu, cr3) -> bool:
    """Read the PDPTEs; neither free the current root nor request a PGD load
    (both came with Lai Jiangshan's fix in v5.16).

    Mirrors: arch/x86/kvm/x86.c: load_pdptrs() (v5.15)
    """
    from ..kernel.mmu import pdpte_gfn
    vcpu.walk_mmu.pdptrs = tuple((pdpte_gfn(cr3, i) << PAGE_SHIFT) | 1 for i in range(4))
    return True


def kvm_calc_shadow_mmu_root_page_role(regs: RoleRegs, base_only: bool = False):
    """As v5.17's, but the gpte bit is ``gpte_is_8_bytes`` = PG and PAE, so it is
    0 (read: "4-byte") with paging off.  Stored here inverted, as has_4_byte_gpte.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_calc_shadow_root_page_role_common() (v5.15)
    """
    role = v5_17.kvm_calc_shadow_mmu_root_page_role(regs, base_only)
    return role.replace(has_4_byte_gpte=not (is_cr0_pg(regs) and is_cr4_pae(regs)))


@lru_cache(maxsize=None)
def calc_roles(regs: RoleRegs, tdp: bool):
    base = (v5_17.kvm_calc_tdp_mmu_root_page_role(regs) if tdp
            else kvm_calc_shadow_mmu_root_page_role(regs))
    mmu_role = KvmCpuRole(base, calc_mmu_role_ext(regs, with_pg_pae=True))
    return mmu_role, base, guest_paging_level(regs)


def kvm_mmu_calc_root_page_role(vcpu):
    """v5.17's base-only lookup role, with v5.15's gpte bit.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_calc_root_page_role() (v5.15)
    """
    regs = role_regs(vcpu)
    if vcpu.kvm.tdp_enabled:
        return v5_17.kvm_calc_tdp_mmu_root_page_role(regs)
    return kvm_calc_shadow_mmu_root_page_role(regs, base_only=True)


def kvm_mmu_new_pgd(vcpu, new_pgd):
    """Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_new_pgd() (v5.15)."""
    vcpu.ops.__kvm_mmu_new_pgd(vcpu, new_pgd, kvm_mmu_calc_root_page_role(vcpu))


V5_15 = replace(
    V5_17,
    name="v5.15",
    kernel="v5.15",
    summary=("as v5.17, but CR4.PGE is a role bit, CR4.PCIDE 1->0 resets, and a guest TLB "
             "flush under shadow paging unloads every root"),
    sources=("v5.15 tree (torvalds/linux x86.c at f3d1436d, mmu/mmu.c at c6cecc4b)",
             "a91a7c709600 (v5.16) KVM: X86: Don't reset mmu context when toggling X86_CR4_PGE",
             "61b05a9fd4ae (v5.16) KVM: X86: Don't unload MMU in kvm_vcpu_flush_tlb_guest()",
             "509bfe3d9796 (v5.16) KVM: X86: Cache CR3 in prev_roots when PCID is disabled"),
    page_role_fields=tuple("gpte_is_8_bytes" if f == "has_4_byte_gpte" else f
                           for f in PAGE_ROLE_FIELDS_V5),
    cr4_role_bits=KVM_MMU_CR4_ROLE_BITS_V5_15,
    inferred=None,
    calc_roles=calc_roles,
    names={**V5_17.names, "kvm_service_local_tlb_flush_requests": None},   # inline in 5.15
    overrides={**V5_17.overrides,
               "kvm_mmu_new_pgd": kvm_mmu_new_pgd,
               "kvm_post_set_cr4": kvm_post_set_cr4,
               "kvm_vcpu_flush_tlb_guest": kvm_vcpu_flush_tlb_guest,
               "kvm_invalidate_pcid": kvm_invalidate_pcid,
               "load_pdptrs": load_pdptrs},
)
