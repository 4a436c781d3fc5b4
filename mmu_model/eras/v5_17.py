"""Era v5.17: before Paolo Bonzini's February 2022 series (v5.16/v5.17).

What differs from the core (v6.18) shape: one ``mmu_role`` that mixes the
guest's mode into the TDP root role (guest CR0.WP and EFER_NX select a
different TDP root), the fast PGD switch only for 64-bit guest and host
paging and looked up *before* the MMU is re-initialised, no TLB-flush
requests in the CR0/CR4 paths (the reset is a superset), CR4.PCIDE changes
unloading through KVM_REQ_MMU_RELOAD, EFER_NX alone as an EFER role bit,
TDP MMU roots destroyed with their last vCPU reference.

A quirk the model reproduces (read in the v5.17 source): kvm_mmu_new_pgd()
looks roots up with a role computed "base only", whose smep/smap_andnot_wp
bits are always 0.  A shadow-paged guest running with CR4.SMEP (or SMAP) and
CR0.WP=0 therefore never hits the prev_roots cache on MOV CR3.
"""
from __future__ import annotations

from functools import lru_cache

from ..kernel.kvm import KVM_MMU_NUM_PREV_ROOTS, KVM_MMU_ROOT_CURRENT
from ..kernel.registers import (
    EFER_NX,
    X86_CR4_LA57,
    X86_CR4_PCIDE,
    X86_CR4_PGE,
    X86_CR4_SMAP,
    X86_CR4_SMEP,
)
from ..kernel.requests import KVM_REQ, kvm_make_request
from ..kernel.roles import (
    ACC_ALL,
    PT32E_ROOT_LEVEL,
    PT64_ROOT_4LEVEL,
    PT64_ROOT_5LEVEL,
    TDP_ROOT_LEVEL,
    KvmCpuRole,
    RoleRegs,
    calc_mmu_role_ext,
    guest_paging_level,
    intern_role,
    is_cr0_pg,
    is_cr0_wp,
    is_cr4_pae,
    is_efer_lma,
    role_regs,
)
from .era import Era
from .v6_18 import KVM_MMU_CR0_ROLE_BITS, KVM_MMU_CR4_ROLE_BITS

PAGE_ROLE_FIELDS_V5 = ("level", "has_4_byte_gpte", "quadrant", "direct", "access", "invalid",
                       "efer_nx", "cr0_wp", "smep_andnot_wp", "smap_andnot_wp", "ad_disabled",
                       "guest_mode", "smm")


def _role_common(regs: RoleRegs) -> dict:
    """kvm_calc_mmu_role_common(): access, and WP/NX only while paging."""
    role = dict(access=ACC_ALL, smm=int(regs.smm), guest_mode=regs.guest_mode)
    if is_cr0_pg(regs):
        role.update(efer_nx=bool(regs.efer & EFER_NX), cr0_wp=is_cr0_wp(regs))
    return role


def kvm_calc_tdp_mmu_root_page_role(regs: RoleRegs):
    """The TDP root role, which still carries the guest's CR0.WP and EFER.NX.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_calc_tdp_mmu_root_page_role() (v5.17)
    """
    return intern_role(**_role_common(regs), ad_disabled=False, level=TDP_ROOT_LEVEL,
                       direct=True, has_4_byte_gpte=False)


def kvm_calc_shadow_mmu_root_page_role(regs: RoleRegs, base_only: bool = False):
    """The shadow root role: PAE-sized below long mode, direct with paging off.

    ``smep_andnot_wp``/``smap_andnot_wp`` are derived from the *extended*
    role, which is only filled in while paging and never when ``base_only``
    is set: so they are 0 with CR0.PG=0, and 0 in the role that
    kvm_mmu_new_pgd() looks roots up with.
    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_calc_shadow_mmu_root_page_role(),
    kvm_calc_shadow_root_page_role_common() (v5.17)
    """
    wp = is_cr0_wp(regs)
    ext_smep = is_cr0_pg(regs) and not base_only and bool(regs.cr4 & X86_CR4_SMEP)
    ext_smap = is_cr0_pg(regs) and not base_only and bool(regs.cr4 & X86_CR4_SMAP)
    if not is_efer_lma(regs):
        level = PT32E_ROOT_LEVEL
    else:
        level = PT64_ROOT_5LEVEL if regs.cr4 & X86_CR4_LA57 else PT64_ROOT_4LEVEL
    return intern_role(**_role_common(regs),
                       smep_andnot_wp=ext_smep and not wp,
                       smap_andnot_wp=ext_smap and not wp,
                       has_4_byte_gpte=is_cr0_pg(regs) and not is_cr4_pae(regs),
                       direct=not is_cr0_pg(regs), level=level)


@lru_cache(maxsize=None)
def calc_roles(regs: RoleRegs, tdp: bool):
    base = kvm_calc_tdp_mmu_root_page_role(regs) if tdp else kvm_calc_shadow_mmu_root_page_role(regs)
    mmu_role = KvmCpuRole(base, calc_mmu_role_ext(regs, with_pg_pae=True))
    return mmu_role, base, guest_paging_level(regs)


# ---------------------------------------------------------------------------
# Functions that differ from the core

def kvm_post_set_cr0(vcpu, old_cr0, cr0):
    """Any CR0.PG or CR0.WP change resets the MMU; no TLB-flush request.

    Mirrors: arch/x86/kvm/x86.c: kvm_post_set_cr0() (v5.17)
    """
    if (cr0 ^ old_cr0) & KVM_MMU_CR0_ROLE_BITS:
        vcpu.ops.kvm_mmu_reset_context(vcpu)


def kvm_post_set_cr4(vcpu, old_cr4, cr4):
    """A role-bit change resets; else a PCIDE change unloads at the next entry
    (KVM_REQ_MMU_RELOAD); else a PGE change flushes the guest TLB.  The chain
    relies on "reset is a superset of reload, which is a superset of a flush".

    Mirrors: arch/x86/kvm/x86.c: kvm_post_set_cr4() (v5.16, v5.17)
    """
    changed = cr4 ^ old_cr4
    if changed & KVM_MMU_CR4_ROLE_BITS:
        vcpu.ops.kvm_mmu_reset_context(vcpu)
    elif changed & X86_CR4_PCIDE:
        kvm_make_request(KVM_REQ.MMU_RELOAD, vcpu)
    elif changed & X86_CR4_PGE:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)


def kvm_mmu_calc_root_page_role(vcpu):
    """The root role for the current registers, computed afresh with
    ``base_only``: under shadow paging its smep/smap_andnot_wp bits are always
    0, so with CR4.SMEP or SMAP set and CR0.WP=0 no cached root ever matches.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_calc_root_page_role() (v5.17)
    """
    regs = role_regs(vcpu)
    if vcpu.kvm.tdp_enabled:
        return kvm_calc_tdp_mmu_root_page_role(regs)
    return kvm_calc_shadow_mmu_root_page_role(regs, base_only=True)


def kvm_mmu_new_pgd(vcpu, new_pgd):
    """Switch to ``new_pgd`` with the role computed from the registers now.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_new_pgd() (v5.17)
    """
    vcpu.ops.__kvm_mmu_new_pgd(vcpu, new_pgd, kvm_mmu_calc_root_page_role(vcpu))


def __kvm_mmu_new_pgd(vcpu, new_pgd, new_role):
    """On a fast-switch miss free the current root (the LRU victim, or a root
    that could not be cached); on a hit request KVM_REQ_LOAD_MMU_PGD.

    Mirrors: arch/x86/kvm/mmu/mmu.c: __kvm_mmu_new_pgd() (v5.17)
    """
    if not vcpu.ops.fast_pgd_switch(vcpu, new_pgd, new_role):
        vcpu.ops.kvm_mmu_free_roots(vcpu.kvm, vcpu.mmu, KVM_MMU_ROOT_CURRENT)
        return
    kvm_make_request(KVM_REQ.LOAD_MMU_PGD, vcpu)
    if vcpu.kvm.era.force_flush_and_sync_on_reuse:
        kvm_make_request(KVM_REQ.MMU_SYNC, vcpu)
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)


def fast_pgd_switch(vcpu, new_pgd, new_role):
    """Use the root cache only when both KVM's and the guest's paging are 64-bit.

    Mirrors: arch/x86/kvm/mmu/mmu.c: fast_pgd_switch() (v5.17)
    """
    mmu = vcpu.mmu
    shadow_root_level = mmu.root_role.level if mmu.root_role is not None else 0  # never set up yet
    if shadow_root_level >= PT64_ROOT_4LEVEL and mmu.root_level >= PT64_ROOT_4LEVEL:
        return vcpu.ops.cached_root_available(vcpu, new_pgd, new_role)
    return False


def cached_root_available(vcpu, new_pgd, new_role):
    """Rotate current and prev_roots until a usable root is current.

    On a miss the LRU root (old prev_roots[2]) ends up current and the caller
    frees it.
    Mirrors: arch/x86/kvm/mmu/mmu.c: cached_root_available() (v5.17)
    """
    mmu = vcpu.mmu
    usable = vcpu.ops.is_root_usable
    root = mmu.root
    if usable(root, new_pgd, new_role):
        return True
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        root, mmu.prev_roots[i] = mmu.prev_roots[i], root
        if usable(root, new_pgd, new_role):
            break
    mmu.root = root
    if i < KVM_MMU_NUM_PREV_ROOTS and usable(root, new_pgd, new_role):
        vcpu.kvm.step.cache_hits += 1
        vcpu.kvm.step.root_source = "cache"
        return True
    return False


def kvm_init_shadow_ept_mmu(vcpu, new_eptp):
    """The same shadow-EPT role as later kernels, in the opposite order: v5.17
    switches to the EPTP first - passing the new role itself, since its
    kvm_mmu_new_pgd() would compute one from the registers - and sets the
    context after (3cffc89d9d07 reversed the order in v5.18).

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_init_shadow_ept_mmu() (v5.17)
    """
    from ..kernel.nested import VMX_EPTP_AD_ENABLE_BIT, kvm_calc_shadow_ept_root_page_role
    context = vcpu.guest_mmu
    level = ((new_eptp >> 3) & 7) + 1
    new_role = kvm_calc_shadow_ept_root_page_role(vcpu, bool(new_eptp & VMX_EPTP_AD_ENABLE_BIT),
                                                  False, level)
    vcpu.ops.__kvm_mmu_new_pgd(vcpu, new_eptp, new_role.base)
    if new_role != context.cpu_role:
        context.cpu_role, context.root_role, context.root_level = new_role, new_role.base, level


def kvm_init_shadow_npt_mmu(vcpu, cr0, cr4, efer, nested_cr3):
    """SVM's counterpart: switch to nCR3 with the new shadow-NPT role, then
    set the context (the order 3cffc89d9d07 reversed in v5.18).

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_init_shadow_npt_mmu() (v5.17)
    """
    from ..kernel.registers import X86_CR4_PKE
    from ..kernel.roles import RoleRegs
    context = vcpu.guest_mmu
    regs = RoleRegs(cr0, cr4 & ~X86_CR4_PKE, efer, vcpu.smm, True)
    cpu_role, _root, level = vcpu.kvm.era.calc_roles(regs, False)
    root_role = cpu_role.base.replace(level=TDP_ROOT_LEVEL, direct=False)
    vcpu.ops.__kvm_mmu_new_pgd(vcpu, nested_cr3, root_role)
    context.cpu_role, context.root_role, context.root_level = cpu_role, root_role, level


def nested_vmx_load_cr3(vcpu, cr3, nested_ept):
    """v5.17 switched roots *before* re-initialising the MMU (without nested
    EPT), with a role computed from the registers then.

    Mirrors: arch/x86/kvm/vmx/nested.c: nested_vmx_load_cr3() (v5.17)
    """
    if not nested_ept:
        vcpu.ops.kvm_mmu_new_pgd(vcpu, cr3)
    vcpu.cr3 = cr3
    vcpu.ops.kvm_init_mmu(vcpu)


def kvm_mmu_reload(vcpu):
    """Mirrors: arch/x86/kvm/mmu.h: kvm_mmu_reload() (v5.17)."""
    if vcpu.mmu.root.hpa is not None:
        return
    vcpu.ops.kvm_mmu_load(vcpu)


def kvm_mmu_invpcid_gva(vcpu, gva, pcid):
    """INVPCID type 0: zap ``gva`` in roots tagged ``pcid``, then one hardware flush.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_invpcid_gva() (v5.17)
    """
    from ..kernel.mmu import page_for_addr, sync_page
    mmu = vcpu.mmu
    roots = [mmu.root] if pcid == vcpu.active_pcid() else []
    roots += [p for p in mmu.prev_roots if p.hpa is not None and pcid == vcpu.pcid(p.pgd)]
    for info in roots:             # mmu->invlpg() on each matching root
        sync_page(vcpu.kvm, page_for_addr(info.hpa, gva), [gva])
    if roots:
        vcpu.ops.flush_tlb_gva(vcpu, gva)


V5_17 = Era(
    name="v5.17",
    kernel="v5.16 .. v5.17",
    summary=("every CR0.PG/WP or CR4 role-bit change unloads all roots; the TDP root role "
             "carries guest CR0.WP/EFER.NX; PCIDE changes unload via KVM_REQ_MMU_RELOAD"),
    sources=("a91a7c709600 KVM: X86: Don't reset mmu context when toggling X86_CR4_PGE",
             "552617382c19 KVM: X86: Don't reset mmu context when X86_CR4_PCIDE 1->0",
             "61b05a9fd4ae KVM: X86: Don't unload MMU in kvm_vcpu_flush_tlb_guest()",
             "509bfe3d9796 KVM: X86: Cache CR3 in prev_roots when PCID is disabled",
             "e45e9e3998f0 (v5.16) kvm_invalidate_pcid(): TDP only flushes the guest TLB"),
    calc_roles=calc_roles,
    page_role_fields=PAGE_ROLE_FIELDS_V5,
    cpu_role_name="mmu_role",
    cr0_role_bits=KVM_MMU_CR0_ROLE_BITS,
    cr4_role_bits=KVM_MMU_CR4_ROLE_BITS,
    efer_role_bits=int(EFER_NX),
    cr0_guest_owned_with_ept=0,
    has_mmu_reload=True,
    tdp_mmu_owns_roots=False,
    sregs_flush_guest=False,
    reset_flushes_on_pg=False,
    inferred=("set_efer() follows the v5.17 merge-window tree (reset on EFER.NX only); "
              "d6174299365d (reset on LME|NX too, Cc stable, Feb 2022) may have reached "
              "v5.17 final"),
    overrides={
        "kvm_post_set_cr0": kvm_post_set_cr0,
        "kvm_post_set_cr4": kvm_post_set_cr4,
        "kvm_mmu_new_pgd": kvm_mmu_new_pgd,
        "__kvm_mmu_new_pgd": __kvm_mmu_new_pgd,
        "fast_pgd_switch": fast_pgd_switch,
        "cached_root_available": cached_root_available,
        "kvm_mmu_reload": kvm_mmu_reload,
        "kvm_mmu_invpcid_gva": kvm_mmu_invpcid_gva,
        "kvm_init_shadow_ept_mmu": kvm_init_shadow_ept_mmu,
        "kvm_init_shadow_npt_mmu": kvm_init_shadow_npt_mmu,
        "nested_vmx_load_cr3": nested_vmx_load_cr3,
    },
    names={
        "kvm_tdp_mmu_alloc_root": "kvm_tdp_mmu_get_vcpu_root_hpa",
        "kvm_mmu_get_shadow_page": "kvm_mmu_get_page",
        "kvm_mmu_invalidate_addr": "kvm_mmu_invalidate_gva",
        "kvm_check_and_inject_events": "inject_pending_event",
        "kvm_inject_smi": "kvm_vcpu_ioctl_smi",
        "emulator_leave_smm": None,
        "kvm_mmu_free_obsolete_roots": None,
        "cached_root_find_and_keep_current": None,
        "cached_root_find_without_current": None,
        # v5.17's SVM used one function for every kind of flush.
        "svm:flush_tlb_current": "svm_flush_tlb",
        "svm:flush_tlb_guest": "svm_flush_tlb",
        "svm:flush_tlb_all": "svm_flush_tlb",
    },
)
