"""What VMX and SVM do on their side: register setters, TLB flushes, and
whether a guest action causes a VM exit at all.

Mirrors: arch/x86/kvm/vmx/vmx.c, arch/x86/kvm/svm/svm.c (the kvm_x86_ops
callbacks set_cr0, set_cr4, set_efer, flush_tlb_current, flush_tlb_guest,
flush_tlb_gva, flush_tlb_all).
"""
from __future__ import annotations

from .registers import (
    EFER_LMA,
    EFER_LME,
    X86_CR0_CD,
    X86_CR0_MP,
    X86_CR0_NW,
    X86_CR0_PG,
    X86_CR0_TS,
    X86_CR0_WP,
    X86_CR4_DE,
    X86_CR4_FSGSBASE,
    X86_CR4_OSFXSR,
    X86_CR4_OSXMMEXCPT,
    X86_CR4_PAE,
    X86_CR4_PCE,
    X86_CR4_PCIDE,
    X86_CR4_PGE,
    X86_CR4_PSE,
    X86_CR4_PVI,
    X86_CR4_SMEP,
    X86_CR4_TSD,
)


def set_cr0(vcpu, cr0):
    """Vendor CR0 write: enter or leave long mode when PG flips with EFER.LME.

    Mirrors: vmx.c: vmx_set_cr0() / svm.c: svm_set_cr0() (enter_lmode, exit_lmode)
    """
    old_pg = vcpu.cr0 & X86_CR0_PG
    if vcpu.efer & EFER_LME:
        if not old_pg and cr0 & X86_CR0_PG:
            vcpu.efer |= EFER_LMA
        elif old_pg and not cr0 & X86_CR0_PG:
            vcpu.efer &= ~EFER_LMA
    vcpu.cr0 = int(cr0)


def set_cr4(vcpu, cr4):
    """Mirrors: vmx.c: vmx_set_cr4() / svm.c: svm_set_cr4()."""
    vcpu.cr4 = int(cr4)


def set_efer_vendor(vcpu, efer):
    """Mirrors: vmx.c: vmx_set_efer() / svm.c: svm_set_efer()."""
    vcpu.efer = int(efer)


def hw_vpid(vcpu) -> int:
    """The VPID the hardware runs the guest with: vpid01 (the model's 1) for L1,
    and for L2 vpid02 (2) only when vmcs12 enables VPID; SVM uses one ASID.

    Mirrors: vmx.c/vmx.h: vmx_get_current_vpid(), nested_get_vpid02()
    """
    if vcpu.guest_mode and vcpu.kvm.vendor == "vmx" and vcpu.vmcs12.virtual_processor_id:
        return 2
    return 1


def hw_tag(vcpu):
    """What the hardware tags the guest's translations with besides PCID:
    (VPID, EPTP), the EPTP being the current TDP or shadow-EPT root on VMX
    with EPT, None otherwise."""
    kvm = vcpu.kvm
    root = vcpu.mmu.root.hpa
    eptp = root.id if kvm.tdp_enabled and kvm.vendor == "vmx" and root is not None else None
    return hw_vpid(vcpu), eptp


def flush_tlb_current(vcpu):
    """Flush the current root's translations: INVEPT of the current EPTP (VMX
    with EPT; nothing if there is no root), the current VPID (VMX without
    EPT), or the ASID (SVM).

    Mirrors: vmx.c: vmx_flush_tlb_current() / svm.c: svm_flush_tlb_current()
    """
    vcpu.kvm.step.flushes.append("current")
    if vcpu.hwtlb is not None:
        vpid, eptp = hw_tag(vcpu)
        if vcpu.kvm.vendor == "svm":
            vcpu.hwtlb.flush_asid(vpid)
        elif eptp is not None:
            vcpu.hwtlb.flush_eptp(eptp)
        elif not (vcpu.kvm.tdp_enabled and vcpu.kvm.vendor == "vmx"):
            vcpu.hwtlb.flush_vpid(vpid)


def flush_tlb_guest(vcpu):
    """Flush the guest's linear translations: INVVPID of the current VPID
    (VMX), or the whole ASID (SVM, which has no narrower flush).

    Mirrors: vmx.c: vmx_flush_tlb_guest() / svm.c: svm_flush_tlb_asid()
    """
    vcpu.kvm.step.flushes.append("guest")
    if vcpu.hwtlb is not None:
        if vcpu.kvm.vendor == "svm":
            vcpu.hwtlb.flush_asid(hw_vpid(vcpu))
        else:
            vcpu.hwtlb.flush_vpid(hw_vpid(vcpu))


def flush_tlb_all(vcpu):
    """Mirrors: vmx.c: vmx_flush_tlb_all() / svm.c: svm_flush_tlb_all()."""
    vcpu.kvm.step.flushes.append("all")
    if vcpu.hwtlb is not None:
        vcpu.hwtlb.flush_all()


def flush_tlb_gva(vcpu, addr):
    """Mirrors: vmx.c: vmx_flush_tlb_gva() / svm.c: svm_flush_tlb_gva()."""
    vcpu.kvm.step.flushes.append("gva")
    if vcpu.hwtlb is not None:
        vcpu.hwtlb.flush_addr_all_pcids(addr, hw_vpid(vcpu))


def apic_init_signal_blocked(vcpu) -> bool:
    """Is an INIT held pending rather than delivered?  VMX: while L1 is in
    VMX root operation (after VMXON, L2 not running).  SVM: while GIF is
    clear, which the model never has in L1 (it assumes L1 runs with GIF set).

    Mirrors: vmx.c: vmx_apic_init_signal_blocked() / svm.c:
    svm_apic_init_signal_blocked()
    """
    if vcpu.kvm.vendor == "vmx":
        return bool(vcpu.vmxon) and not vcpu.guest_mode
    return False


VENDOR_NAMES = {
    "vmx": {"set_cr0": "vmx_set_cr0", "set_cr4": "vmx_set_cr4", "set_efer_vendor": "vmx_set_efer",
            "flush_tlb_current": "vmx_flush_tlb_current", "flush_tlb_guest": "vmx_flush_tlb_guest",
            "flush_tlb_all": "vmx_flush_tlb_all", "flush_tlb_gva": "vmx_flush_tlb_gva",
            "vendor_enter_smm": "vmx_enter_smm", "vendor_leave_smm": "vmx_leave_smm"},
    "svm": {"set_cr0": "svm_set_cr0", "set_cr4": "svm_set_cr4", "set_efer_vendor": "svm_set_efer",
            "flush_tlb_current": "svm_flush_tlb_current", "flush_tlb_guest": "svm_flush_tlb_asid",
            "flush_tlb_all": "svm_flush_tlb_all", "flush_tlb_gva": "svm_flush_tlb_gva",
            "vendor_enter_smm": "svm_enter_smm", "vendor_leave_smm": "svm_leave_smm",
            # nested SVM: the same flows under SVM's names (nested.py)
            "nested_vmx_enter_non_root_mode": "enter_svm_guest_mode",
            "nested_vmx_transition_tlb_flush": "nested_svm_transition_tlb_flush",
            "nested_ept_init_mmu_context": "nested_svm_init_mmu_context",
            "nested_ept_uninit_mmu_context": "nested_svm_uninit_mmu_context",
            "nested_vmx_load_cr3": "nested_svm_load_cr3",
            "nested_vmx_vmexit": "nested_svm_vmexit",
            "load_vmcs12_host_state": None},
}

VENDOR_FUNCTIONS = {"set_cr0": set_cr0, "set_cr4": set_cr4, "set_efer_vendor": set_efer_vendor,
                    "flush_tlb_current": flush_tlb_current, "flush_tlb_guest": flush_tlb_guest,
                    "flush_tlb_all": flush_tlb_all, "flush_tlb_gva": flush_tlb_gva}

# kvm_cache_regs.h: KVM_POSSIBLE_CR4_GUEST_BITS (without CET)
KVM_POSSIBLE_CR4_GUEST_BITS = (X86_CR4_PVI | X86_CR4_DE | X86_CR4_PCE | X86_CR4_OSFXSR
                               | X86_CR4_OSXMMEXCPT | X86_CR4_PGE | X86_CR4_TSD | X86_CR4_FSGSBASE)
# vmx.c: bits VMX stops passing through without EPT
X86_CR4_TLBFLUSH_BITS = X86_CR4_PGE | X86_CR4_PCIDE | X86_CR4_PAE | X86_CR4_SMEP
X86_CR4_PDPTR_BITS = X86_CR4_PGE | X86_CR4_PSE | X86_CR4_PAE | X86_CR4_SMEP


def vmx_cr0_guest_owned(vcpu) -> int:
    """CR0 bits the guest owns on VMX: TS, plus WP with EPT from v6.4.

    Mirrors: vmx.h: vmx_l1_guest_owned_cr0_bits(), kvm_cache_regs.h:
    KVM_POSSIBLE_CR0_GUEST_BITS (fb509f76acc8)
    """
    owned = int(X86_CR0_TS)
    if vcpu.kvm.tdp_enabled:
        owned |= vcpu.kvm.era.cr0_guest_owned_with_ept
    return owned


def vmx_cr4_guest_owned(vcpu) -> int:
    """CR4 bits the guest owns on VMX; without EPT the TLB-flush and PDPTR bits
    stay with KVM.

    Mirrors: vmx.c: vmx_set_constant_host_state()/set_cr4_guest_host_mask()
    """
    owned = int(KVM_POSSIBLE_CR4_GUEST_BITS)
    if not vcpu.kvm.tdp_enabled:
        owned &= ~(X86_CR4_TLBFLUSH_BITS | X86_CR4_PDPTR_BITS)
    return owned


def exits(vcpu, op: str, new_value: int | None = None):
    """(intercepted, reason) for a guest action: does KVM see it at all?

    ``new_value`` is the value written for mov_cr0 / mov_cr4.  Host actions
    (SMI, INIT, ioctls, MSR writes) and RSM always reach KVM.  See README
    "Model assumptions" for the settings assumed (unrestricted guest, VPID).
    """
    kvm = vcpu.kvm
    tdp = kvm.tdp_enabled
    if op == "mov_cr0":
        changed = vcpu.cr0 ^ new_value
        if kvm.vendor == "vmx":
            if changed & ~vmx_cr0_guest_owned(vcpu) & 0xFFFFFFFF or new_value >> 32:
                return True, None
            return False, "VMX: the write changes only guest-owned CR0 bits, so it does not exit"
        # SVM (svm_set_cr0): the full CR0 intercepts stay on unless the
        # hardware CR0 equals the guest's; shadow paging forces PG|WP into it
        # and the CD_NW_CLEARED quirk strips CD|NW.  The selective CR0 write
        # intercept always fires when bits other than TS and MP change.
        hcr0 = vcpu.cr0 | (0 if tdp else X86_CR0_PG | X86_CR0_WP)
        hcr0 &= ~(X86_CR0_CD | X86_CR0_NW)
        if hcr0 != vcpu.cr0 or changed & ~(X86_CR0_TS | X86_CR0_MP) or new_value >> 32:
            return True, None
        return False, "SVM: only TS/MP change, which the selective CR0 intercept ignores"
    if op == "mov_cr4":
        if kvm.vendor == "svm":
            return True, None
        if (vcpu.cr4 ^ new_value) & ~vmx_cr4_guest_owned(vcpu):
            return True, None
        return False, "VMX: the write changes only guest-owned CR4 bits, so it does not exit"
    if op in ("mov_cr3", "invlpg", "invpcid"):
        if tdp:
            return False, f"{op}: not intercepted with {'EPT' if kvm.vendor == 'vmx' else 'NPT'}"
        return True, None
    return True, None
