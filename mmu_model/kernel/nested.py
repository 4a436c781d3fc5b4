"""Nested TDP: L1 runs L2 under its own EPT (VMX) or NPT (SVM), and L0 shadows
those tables in ``guest_mmu``.

Three MMU contexts per vCPU: ``root_mmu`` (L1, a TDP root), ``guest_mmu``
(the shadow of L1's EPT/NPT, roots keyed by the EPTP / nCR3) and
``nested_mmu`` (the software walker for L2's own page tables; it has roles
but never roots).  ``vcpu.mmu`` points at guest_mmu while L2 runs and at
root_mmu otherwise; ``walk_mmu`` at nested_mmu while L2 runs.

Each function mirrors the VMX function of the same name in
arch/x86/kvm/vmx/nested.c in its v6.18 shape, and SVM's counterpart in
arch/x86/kvm/svm/nested.c where the two differ (the trace uses SVM's names
on SVM).  Simplifications (README, "Model assumptions"): L1 intercepts none
of L2's CR0/CR4/EFER writes, so L0 handles them; L1 always enables EPT/NPT
for L2; a VM-entry never fails its consistency checks except on a bad EPTP.
"""
from __future__ import annotations

from .kvm import (
    KVM_MMU_NUM_PREV_ROOTS,
    KVM_MMU_ROOT_CURRENT,
    KVM_MMU_ROOT_PREVIOUS,
    KVM_MMU_ROOTS_ALL,
    Vmcs12,
    ept_table,
)
from .registers import GUEST_MAXPHYADDR, X86_CR0_PE, X86_CR0_PG, X86_CR4_PKE
from .requests import KVM_REQ, kvm_make_request
from .roles import ACC_ALL, TDP_ROOT_LEVEL, KvmCpuRole, KvmMmuExtendedRole, RoleRegs, intern_role

# EPTP fields (SDM 25.6.11): memory type in bits 2:0, walk length - 1 in 5:3,
# accessed/dirty enable in bit 6.
VMX_EPTP_MT_UC, VMX_EPTP_MT_WB = 0, 6
VMX_EPTP_AD_ENABLE_BIT = 1 << 6
VMX_EPTP_PA_MASK = ((1 << 52) - 1) & ~0xFFF
# The model's defaults: L1 in long mode with its own page tables at 0x10000,
# and an EPTP for L2 (write-back, 4-level, A/D on) whose table is at 0x50000.
L1_CR3 = 0x10000
DEFAULT_EPTP = 0x50000 | VMX_EPTP_AD_ENABLE_BIT | (3 << 3) | VMX_EPTP_MT_WB
DEFAULT_VPID12 = 1
# INVEPT / INVVPID types (vmx.h)
VMX_EPT_EXTENT_CONTEXT, VMX_EPT_EXTENT_GLOBAL = 1, 2
VMX_VPID_EXTENT_INDIVIDUAL_ADDR, VMX_VPID_EXTENT_SINGLE_CONTEXT = 0, 1
VMX_VPID_EXTENT_ALL_CONTEXT, VMX_VPID_EXTENT_SINGLE_NON_GLOBAL = 2, 3


def mmu_is_nested(vcpu) -> bool:
    """Mirrors: arch/x86/kvm/x86.h: mmu_is_nested()."""
    return vcpu.walk_mmu is vcpu.nested_mmu


def nested_vmx_check_eptp(vcpu, eptp):
    """0, or why L1's EPTP is invalid (VM-entry fails; INVEPT fails).

    Mirrors: arch/x86/kvm/vmx/nested.c: nested_vmx_check_eptp()
    """
    if eptp & 7 not in (VMX_EPTP_MT_UC, VMX_EPTP_MT_WB):
        return f"EPTP {eptp:#x}: memory type {eptp & 7} is neither UC (0) nor WB (6)"
    walk = ((eptp >> 3) & 7) + 1
    if walk != 4:
        return f"EPTP {eptp:#x}: page-walk length {walk}; the model's L1 uses 4-level EPT"
    if eptp & 0xF80 or eptp >> GUEST_MAXPHYADDR:
        return f"EPTP {eptp:#x} sets reserved bits"
    return 0


# ---------------------------------------------------------------------------
# Roles of the nested contexts

def kvm_calc_shadow_ept_root_page_role(vcpu, accessed_dirty, execonly, level) -> KvmCpuRole:
    """The shadow-EPT role: L1's EPT format only; no CR0, CR4 or EFER bit.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_calc_shadow_ept_root_page_role()
    """
    base = intern_role(level=level, has_4_byte_gpte=False, direct=False,
                       ad_disabled=not accessed_dirty, guest_mode=True, access=ACC_ALL)
    return KvmCpuRole(base, KvmMmuExtendedRole(valid=True, execonly=execonly))


def kvm_init_shadow_ept_mmu(vcpu, new_eptp):
    """Set guest_mmu's role for L1's EPTP (only if it changed), then switch to
    the EPTP through guest_mmu's root cache.

    "EPT, and thus nested EPT, does not consume CR0, CR4, nor EFER": L2's
    register writes never change this role.
    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_init_shadow_ept_mmu()
    """
    context = vcpu.guest_mmu
    level = ((new_eptp >> 3) & 7) + 1
    new_mode = kvm_calc_shadow_ept_root_page_role(vcpu, bool(new_eptp & VMX_EPTP_AD_ENABLE_BIT),
                                                  False, level)
    if new_mode != context.cpu_role:
        context.cpu_role, context.root_role, context.root_level = new_mode, new_mode.base, level
    vcpu.ops.kvm_mmu_new_pgd(vcpu, new_eptp)


def kvm_init_shadow_npt_mmu(vcpu, cr0, cr4, efer, nested_cr3):
    """SVM: guest_mmu's role comes from L1's CR0/CR4/EFER (the NPT format
    depends on them), at the host's TDP level; then switch to nCR3.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_init_shadow_npt_mmu()
    """
    context = vcpu.guest_mmu
    era = vcpu.kvm.era
    regs = RoleRegs(cr0, cr4 & ~X86_CR4_PKE, efer, vcpu.smm, True)
    cpu_role, _root, level = era.calc_roles(regs, False)
    root_role = cpu_role.base.replace(level=TDP_ROOT_LEVEL, direct=False)
    if cpu_role != context.cpu_role or root_role != context.root_role:
        context.cpu_role, context.root_role, context.root_level = cpu_role, root_role, level
    vcpu.ops.kvm_mmu_new_pgd(vcpu, nested_cr3)


def init_kvm_nested_mmu(vcpu):
    """L2's walker: the CPU role of L2's registers; it owns no roots.

    Mirrors: arch/x86/kvm/mmu/mmu.c: init_kvm_nested_mmu()
    """
    from .roles import role_regs
    cpu_role, _root, level = vcpu.kvm.era.calc_roles(role_regs(vcpu), False)
    g = vcpu.nested_mmu
    if g.cpu_role != cpu_role:
        g.cpu_role, g.root_level = cpu_role, level


def nested_ept_init_mmu_context(vcpu):
    """Run L2 on guest_mmu, walk L2's tables with nested_mmu.  root_mmu's
    roots stay loaded for when L1 runs again.

    Mirrors: arch/x86/kvm/vmx/nested.c: nested_ept_init_mmu_context(),
    nested_ept_new_eptp() / svm/nested.c: nested_svm_init_mmu_context()
    """
    vcpu.mmu = vcpu.guest_mmu
    v = vcpu.vmcs12
    if vcpu.kvm.vendor == "vmx":
        vcpu.ops.kvm_init_shadow_ept_mmu(vcpu, v.ept_pointer)
    else:
        # L1's CR4 and EFER; of CR0 only PG ("CR0.WP is explicitly ignored")
        vcpu.ops.kvm_init_shadow_npt_mmu(vcpu, X86_CR0_PG, v.host_cr4, v.host_efer, v.ept_pointer)
    vcpu.walk_mmu = vcpu.nested_mmu


def nested_ept_uninit_mmu_context(vcpu):
    """Back to root_mmu for both running and walking.

    Mirrors: arch/x86/kvm/vmx/nested.c: nested_ept_uninit_mmu_context() /
    svm/nested.c: nested_svm_uninit_mmu_context()
    """
    vcpu.mmu = vcpu.root_mmu
    vcpu.walk_mmu = vcpu.root_mmu


def nested_vmx_load_cr3(vcpu, cr3, nested_ept):
    """Load a CR3 on a nested transition: set it, re-init the MMU, then (only
    without nested EPT/NPT) switch roots through the cache.

    Mirrors: arch/x86/kvm/vmx/nested.c: nested_vmx_load_cr3() /
    svm/nested.c: nested_svm_load_cr3() (v5.18+: 3cffc89d9d07 moved the
    kvm_mmu_new_pgd() after kvm_init_mmu())
    """
    vcpu.cr3 = cr3
    vcpu.ops.kvm_init_mmu(vcpu)
    if not nested_ept:
        vcpu.ops.kvm_mmu_new_pgd(vcpu, cr3)


# ---------------------------------------------------------------------------
# Nested VM-entry and VM-exit

def nested_vmx_transition_tlb_flush(vcpu, is_vmenter):
    """The TLB flush a nested transition implies.

    VMX: without VPID in vmcs12 L2 shares L1's VPID 0, which VM-entry and
    VM-exit flush: a guest TLB flush.  With VPID, a vpid12 that differs from
    the last one is a new address-space tag KVM knows nothing about: a guest
    TLB flush on entry.  The kernel's third case - flush the current context
    when L2 has no TLB tag of its own - never arises with EPT in L0:
    nested_has_guest_tlb_tag() is true whenever EPT is on, because L2 runs
    on its own EPTP (a guest_mmu root).  Guest-physical mappings are never
    flushed by a transition.
    SVM: KVM gives L1 and L2 one ASID and does not track L1's ASIDs; every
    transition syncs the current root and flushes the ASID.

    Mirrors: arch/x86/kvm/vmx/nested.c: nested_vmx_transition_tlb_flush() /
    svm/nested.c: nested_svm_transition_tlb_flush()
    """
    if vcpu.kvm.vendor == "svm":
        kvm_make_request(KVM_REQ.MMU_SYNC, vcpu)
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)
        return
    vpid12 = vcpu.vmcs12.virtual_processor_id
    if not vpid12:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
        return
    if is_vmenter and vpid12 != vcpu.last_vpid:
        vcpu.last_vpid = vpid12
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)


def nested_vmx_enter_non_root_mode(vcpu, from_vmentry=True):
    """VMLAUNCH/VMRESUME (SVM: VMRUN) from L1: enter guest mode, switch to
    guest_mmu for L1's EPTP / nCR3, load L2's registers without the
    post-write hooks, then L2's CR3.

    VMX services L1's pending TLB flushes first (they name L1's context);
    SVM does not, as its flush of the one ASID covers both.  A pending INIT
    that VMX root operation held back is re-evaluated once L2 runs (v6.1+).
    Mirrors: arch/x86/kvm/vmx/nested.c: nested_vmx_enter_non_root_mode(),
    prepare_vmcs02() / svm/nested.c: enter_svm_guest_mode(),
    nested_vmcb02_prepare_control(), nested_vmcb02_prepare_save()
    """
    ops = vcpu.ops
    v = vcpu.vmcs12
    if from_vmentry:
        # The model's L1 writes its own registers into the host-state fields
        # (SVM: KVM saves them in vmcb01) before each entry; a re-entry from
        # RSM keeps them.
        v.host_cr0, v.host_cr3, v.host_cr4, v.host_efer = vcpu.cr0, vcpu.cr3, vcpu.cr4, vcpu.efer
    if vcpu.kvm.vendor == "svm":
        ops.nested_vmx_transition_tlb_flush(vcpu, True)
        vcpu.guest_mode = True                        # enter_guest_mode()
        ops.nested_ept_init_mmu_context(vcpu)
        ops.set_efer_vendor(vcpu, v.guest_efer)
        ops.set_cr0(vcpu, v.guest_cr0)
        ops.set_cr4(vcpu, v.guest_cr4)
        ops.nested_vmx_load_cr3(vcpu, v.guest_cr3, True)
        return
    ops.kvm_service_local_tlb_flush_requests(vcpu)
    vcpu.guest_mode = True                            # enter_guest_mode()
    ops.nested_vmx_transition_tlb_flush(vcpu, True)
    ops.nested_ept_init_mmu_context(vcpu)
    ops.set_cr0(vcpu, v.guest_cr0)
    ops.set_cr4(vcpu, v.guest_cr4)
    ops.set_efer_vendor(vcpu, v.guest_efer)
    ops.nested_vmx_load_cr3(vcpu, v.guest_cr3, True)
    if vcpu.init_latched:                             # kvm_apic_has_pending_init_or_sipi()
        kvm_make_request(KVM_REQ.EVENT, vcpu)


def nested_vmx_vmexit(vcpu):
    """A nested VM-exit to L1: leave guest mode, save L2's registers in
    vmcs12 (vmcb12), load L1's registers and its CR3 on root_mmu.

    VMX services pending flushes first (they name L2's context), and loads
    L1's state in load_vmcs12_host_state(); SVM does it inline and requests
    its transition flush before switching back to root_mmu.  No root is
    freed: guest_mmu keeps L2's roots for the next entry.
    Mirrors: arch/x86/kvm/vmx/nested.c: nested_vmx_vmexit() /
    svm/nested.c: nested_svm_vmexit()
    """
    ops = vcpu.ops
    v = vcpu.vmcs12
    if vcpu.kvm.vendor == "vmx":
        ops.kvm_service_local_tlb_flush_requests(vcpu)
    vcpu.guest_mode = False                           # leave_guest_mode()
    v.guest_cr0, v.guest_cr3, v.guest_cr4, v.guest_efer = vcpu.cr0, vcpu.cr3, vcpu.cr4, vcpu.efer
    if vcpu.kvm.vendor == "vmx":
        ops.load_vmcs12_host_state(vcpu)
        return
    ops.set_efer_vendor(vcpu, v.host_efer)
    ops.set_cr0(vcpu, v.host_cr0 | X86_CR0_PE)
    ops.set_cr4(vcpu, v.host_cr4)
    ops.nested_vmx_transition_tlb_flush(vcpu, False)
    ops.nested_ept_uninit_mmu_context(vcpu)
    ops.nested_vmx_load_cr3(vcpu, v.host_cr3, False)


def load_vmcs12_host_state(vcpu):
    """VMX: L1's registers from vmcs12's host fields (vendor setters only),
    back to root_mmu, L1's CR3 through the root cache, then the transition's
    flush.

    Mirrors: arch/x86/kvm/vmx/nested.c: load_vmcs12_host_state()
    """
    ops = vcpu.ops
    v = vcpu.vmcs12
    ops.set_efer_vendor(vcpu, v.host_efer)
    ops.set_cr0(vcpu, v.host_cr0)
    ops.set_cr4(vcpu, v.host_cr4)
    ops.nested_ept_uninit_mmu_context(vcpu)
    ops.nested_vmx_load_cr3(vcpu, v.host_cr3, False)
    ops.nested_vmx_transition_tlb_flush(vcpu, False)


# ---------------------------------------------------------------------------
# L1's invalidations

def nested_ept_root_matches(root, eptp) -> bool:
    """A root was built for this EPTP: same table address (flags ignored).

    Mirrors: arch/x86/kvm/vmx/nested.c: nested_ept_root_matches()
    """
    return root.hpa is not None and (root.pgd & VMX_EPTP_PA_MASK) == (eptp & VMX_EPTP_PA_MASK)


def handle_invept(vcpu, type, eptp):
    """L1's INVEPT: free the guest_mmu roots built for that EPTP (single
    context), or all of them (global).  A later entry finds the EPTP in the
    shadow-page hash and syncs it.  Returns 0 or ("VMfail", reason).

    Mirrors: arch/x86/kvm/vmx/nested.c: handle_invept()
    """
    mmu = vcpu.guest_mmu
    if type == VMX_EPT_EXTENT_CONTEXT:
        err = nested_vmx_check_eptp(vcpu, eptp)
        if err:
            return ("VMfail", f"invalid operand to INVEPT: {err}")
        roots_to_free = KVM_MMU_ROOT_CURRENT if nested_ept_root_matches(mmu.root, eptp) else 0
        for i in range(KVM_MMU_NUM_PREV_ROOTS):
            if nested_ept_root_matches(mmu.prev_roots[i], eptp):
                roots_to_free |= KVM_MMU_ROOT_PREVIOUS(i)
    elif type == VMX_EPT_EXTENT_GLOBAL:
        roots_to_free = KVM_MMU_ROOTS_ALL
    else:
        return ("VMfail", f"INVEPT type {type} is not supported (1 single-context, 2 global)")
    if roots_to_free:
        vcpu.ops.kvm_mmu_free_roots(vcpu.kvm, mmu, roots_to_free)
    return 0


def handle_invvpid(vcpu, type, vpid, gla):
    """L1's INVVPID: flush L2's hardware VPID (vpid02) - all of it, or one
    address.  With EPT nothing else: the shadow-EPT roots do not depend on
    L2's linear mappings.  Returns 0 or ("VMfail", reason).

    Mirrors: arch/x86/kvm/vmx/nested.c: handle_invvpid()
    """
    from .mmu import is_noncanonical_address
    if type not in (0, 1, 2, 3):
        return ("VMfail", f"INVVPID type {type} does not exist")
    if vpid >> 16:
        return ("VMfail", f"VPID {vpid:#x} is wider than 16 bits")
    if vpid == 0 and type != VMX_VPID_EXTENT_ALL_CONTEXT:
        return ("VMfail", "VPID 0 is only valid for the all-context type (2)")
    if type == VMX_VPID_EXTENT_INDIVIDUAL_ADDR:
        if is_noncanonical_address(vcpu, gla):
            return ("VMfail", f"INVVPID needs a canonical address, not {gla:#x}")
        vcpu.ops.vpid_sync_vcpu_addr(vcpu, gla)
    else:
        vcpu.ops.vpid_sync_context(vcpu)
    return 0


def vpid_sync_context(vcpu):
    """INVVPID single-context of vpid02 on the hardware.

    Mirrors: arch/x86/kvm/vmx/vmx_ops.h: vpid_sync_context()
    """
    vcpu.kvm.step.flushes.append("vpid02")
    if vcpu.hwtlb is not None:
        vcpu.hwtlb.flush_vpid(2)


def vpid_sync_vcpu_addr(vcpu, gla):
    """INVVPID individual-address of vpid02 on the hardware.

    Mirrors: arch/x86/kvm/vmx/vmx_ops.h: vpid_sync_vcpu_addr()
    """
    vcpu.kvm.step.flushes.append("vpid02-gva")
    if vcpu.hwtlb is not None:
        vcpu.hwtlb.flush_addr_all_pcids(gla, 2)


# ---------------------------------------------------------------------------
# SMM while L2 runs

def vendor_enter_smm(vcpu):
    """An SMI while L2 runs forces a nested VM-exit first: SMM runs in L1's
    context, and RSM will re-enter L2.

    Mirrors: arch/x86/kvm/vmx/vmx.c: vmx_enter_smm() / svm/svm.c: svm_enter_smm()
    """
    vcpu.smm_guest_mode = vcpu.guest_mode
    if vcpu.guest_mode:
        vcpu.ops.nested_vmx_vmexit(vcpu)
    vcpu.smm_vmxon, vcpu.vmxon = vcpu.vmxon, False


def vendor_leave_smm(vcpu):
    """RSM: back in VMX operation; re-enter L2 if the SMI interrupted it, before
    the saved registers load.

    Mirrors: arch/x86/kvm/vmx/vmx.c: vmx_leave_smm() / svm/svm.c: svm_leave_smm()
    """
    vcpu.vmxon = getattr(vcpu, "smm_vmxon", vcpu.vmxon)
    if vcpu.smm_guest_mode:
        vcpu.smm_guest_mode = False
        vcpu.ops.nested_vmx_enter_non_root_mode(vcpu, False)


def new_vmcs12(start: dict, host: dict, vendor: str) -> Vmcs12:
    """The model's vmcs12 at bring-up: L2's start registers, L1's, the default
    EPTP (SVM: the same table as a plain nCR3) and VPID."""
    pointer = DEFAULT_EPTP if vendor == "vmx" else DEFAULT_EPTP & VMX_EPTP_PA_MASK
    return Vmcs12(start, host, pointer, DEFAULT_VPID12 if vendor == "vmx" else 0)


__all__ = ["ept_table", "mmu_is_nested"]
