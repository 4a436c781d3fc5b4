"""Era v6.18: current upstream (the v6.4+ behaviour, read in v6.8 and v6.18).

The core modules already implement this era's functions; this module holds
its role formulas and its record.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from ..kernel.registers import (
    EFER_LME,
    EFER_NX,
    X86_CR0_PG,
    X86_CR0_WP,
    X86_CR4_LA57,
    X86_CR4_PAE,
    X86_CR4_PKE,
    X86_CR4_PSE,
    X86_CR4_SMAP,
    X86_CR4_SMEP,
)
from ..kernel.roles import (
    ACC_ALL,
    PT32_ROOT_LEVEL,
    PT32E_ROOT_LEVEL,
    PT64_ROOT_4LEVEL,
    PT64_ROOT_5LEVEL,
    TDP_ROOT_LEVEL,
    KvmCpuRole,
    RoleRegs,
    calc_mmu_role_ext,
    intern_role,
    is_cr0_pg,
    is_cr0_wp,
    is_cr4_pae,
    is_efer_lma,
)
from .era import Era

# mmu.h, unchanged from v5.18 to v6.18
KVM_MMU_CR0_ROLE_BITS = int(X86_CR0_PG | X86_CR0_WP)
KVM_MMU_CR4_ROLE_BITS = int(X86_CR4_PSE | X86_CR4_PAE | X86_CR4_LA57 | X86_CR4_SMEP
                            | X86_CR4_SMAP | X86_CR4_PKE)
KVM_MMU_EFER_ROLE_BITS = int(EFER_LME | EFER_NX)

PAGE_ROLE_FIELDS_V6 = ("level", "has_4_byte_gpte", "quadrant", "direct", "access", "invalid",
                       "efer_nx", "cr0_wp", "smep_andnot_wp", "smap_andnot_wp", "ad_disabled",
                       "guest_mode", "passthrough", "is_mirror", "smm")


def kvm_calc_cpu_role(regs: RoleRegs) -> KvmCpuRole:
    """The guest's paging mode as a role; with paging off only ``direct`` is set.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_calc_cpu_role() (v5.19+)
    """
    if not is_cr0_pg(regs):
        base = intern_role(access=ACC_ALL, smm=int(regs.smm), guest_mode=regs.guest_mode,
                           direct=True)
        return KvmCpuRole(base, calc_mmu_role_ext(regs, with_pg_pae=False))
    wp = is_cr0_wp(regs)
    if is_efer_lma(regs):
        level = PT64_ROOT_5LEVEL if regs.cr4 & X86_CR4_LA57 else PT64_ROOT_4LEVEL
    else:
        level = PT32E_ROOT_LEVEL if is_cr4_pae(regs) else PT32_ROOT_LEVEL
    base = intern_role(access=ACC_ALL, smm=int(regs.smm), guest_mode=regs.guest_mode,
                       efer_nx=bool(regs.efer & EFER_NX), cr0_wp=wp,
                       smep_andnot_wp=bool(regs.cr4 & X86_CR4_SMEP) and not wp,
                       smap_andnot_wp=bool(regs.cr4 & X86_CR4_SMAP) and not wp,
                       has_4_byte_gpte=not is_cr4_pae(regs), level=level)
    return KvmCpuRole(base, calc_mmu_role_ext(regs, with_pg_pae=False))


def kvm_calc_tdp_mmu_root_page_role(cpu_role: KvmCpuRole):
    """The TDP root role: WP and NX forced to 1; only SMM and guest mode come
    from the CPU role.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_calc_tdp_mmu_root_page_role() (v5.19+)
    """
    return intern_role(access=ACC_ALL, cr0_wp=True, efer_nx=True, smm=cpu_role.base.smm,
                       guest_mode=cpu_role.base.guest_mode, ad_disabled=False,
                       level=TDP_ROOT_LEVEL, direct=True, has_4_byte_gpte=False)


def kvm_init_shadow_mmu_root_role(cpu_role: KvmCpuRole):
    """The shadow root role: the CPU role, at least PAE-sized, with NX forced.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_init_shadow_mmu() (v5.19+)
    """
    return cpu_role.base.replace(level=max(cpu_role.base.level, PT32E_ROOT_LEVEL), efer_nx=True)


@lru_cache(maxsize=None)
def calc_roles(regs: RoleRegs, tdp: bool):
    cpu_role = kvm_calc_cpu_role(regs)
    root_role = (kvm_calc_tdp_mmu_root_page_role(cpu_role) if tdp
                 else kvm_init_shadow_mmu_root_role(cpu_role))
    return cpu_role, root_role, cpu_role.base.level


V6_18 = Era(
    name="v6.18",
    kernel="v6.6 .. v6.18",
    summary=("CR0.WP-only toggles keep the TDP root (VMX+EPT: no exit); TDP MMU roots "
             "outlive unloads; KVM_SET_SREGS flushes the guest TLB"),
    sources=("01b31714bd90 KVM: x86: Do not unload MMU roots when only toggling CR0.WP with TDP enabled",
             "fb509f76acc8 KVM: VMX: Make CR0.WP a guest owned bit",
             "e40bcf9f3a18 KVM: x86: Ignore CR0.WP toggles in non-paging mode",
             "edbdb43fc96b KVM: x86: Preserve TDP MMU roots until they are explicitly invalidated",
             "4346db6e6e7a KVM: x86: Force TLB flush on userspace changes to special registers",
             "<20230322013731.102955-1-minipli@grsecurity.net>"),
    calc_roles=calc_roles,
    page_role_fields=PAGE_ROLE_FIELDS_V6,
    cpu_role_name="cpu_role",
    cr0_role_bits=KVM_MMU_CR0_ROLE_BITS,
    cr4_role_bits=KVM_MMU_CR4_ROLE_BITS,
    efer_role_bits=KVM_MMU_EFER_ROLE_BITS,
    cr0_guest_owned_with_ept=int(X86_CR0_WP),
    has_mmu_reload=False,
    tdp_mmu_owns_roots=True,
    sregs_flush_guest=True,
    reset_flushes_on_pg=True,
)


V6_4 = replace(
    V6_18,
    name="v6.4",
    kernel="v6.4 .. v6.5",
    summary=("CR0.WP-only toggles with TDP just re-init (VMX+EPT: no exit); TDP MMU roots "
             "hold a reference of their own and outlive unloads"),
    sources=V6_18.sources[:4] + ("<20230322013731.102955-1-minipli@grsecurity.net>",),
    page_role_fields=tuple(f for f in PAGE_ROLE_FIELDS_V6 if f != "is_mirror"),
    sregs_flush_guest=False,
    names={"kvm_tdp_mmu_alloc_root": "kvm_tdp_mmu_get_vcpu_root_hpa"},
)
