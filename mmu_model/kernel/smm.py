"""System management mode: SMI delivery and RSM.

Mirrors: arch/x86/kvm/smm.c (v6.2+; x86.c and emulate.c before).  The SMRAM
state-save area is modelled as the four paging registers that RSM restores.
"""
from __future__ import annotations

from .registers import (
    EFER_LMA,
    X86_CR0_EM,
    X86_CR0_PE,
    X86_CR0_PG,
    X86_CR0_TS,
    X86_CR4_PAE,
    X86_CR4_PCIDE,
)
from .requests import KVM_REQ, kvm_make_request


def kvm_inject_smi(vcpu):
    """Raise KVM_REQ_SMI (the KVM_SMI ioctl or an SMI IPI).

    Mirrors: arch/x86/kvm/smm.c: kvm_inject_smi()
    """
    kvm_make_request(KVM_REQ.SMI, vcpu)


def process_smi(vcpu):
    """Mark an SMI pending; it is delivered when events are injected.

    Mirrors: arch/x86/kvm/x86.c: process_smi()
    """
    vcpu.smi_pending = True
    kvm_make_request(KVM_REQ.EVENT, vcpu)


def kvm_smm_changed(vcpu, entering_smm):
    """Flip HF_SMM_MASK and reset the MMU (the role's smm byte changes).

    Mirrors: arch/x86/kvm/smm.c: kvm_smm_changed()
    """
    vcpu.smm = entering_smm
    if not entering_smm:
        kvm_make_request(KVM_REQ.EVENT, vcpu)     # deliver a latched INIT or SMI
    vcpu.ops.kvm_mmu_reset_context(vcpu)


def enter_smm(vcpu):
    """Save state to SMRAM, let the vendor leave guest mode (a forced nested
    VM-exit if L2 was running), enter SMM with paging off, reset the MMU twice.

    The CR0/CR4/EFER writes go through the vendor setters, bypassing the
    kvm_post_set_* hooks; the final reset picks up the new registers.
    Mirrors: arch/x86/kvm/smm.c: enter_smm()
    """
    ops = vcpu.ops
    vcpu.smram = (vcpu.cr0, vcpu.cr3, vcpu.cr4, vcpu.efer)
    ops.vendor_enter_smm(vcpu)
    ops.kvm_smm_changed(vcpu, True)
    ops.set_cr0(vcpu, vcpu.cr0 & ~(X86_CR0_PE | X86_CR0_EM | X86_CR0_TS | X86_CR0_PG))
    ops.set_cr4(vcpu, 0)
    ops.set_efer_vendor(vcpu, 0)
    ops.kvm_mmu_reset_context(vcpu)


def em_rsm(vcpu):
    """RSM: #UD outside SMM, else leave SMM (the emulator handles RSM).

    Mirrors: arch/x86/kvm/emulate.c: em_rsm()
    """
    if not vcpu.smm:
        return ("UD", "RSM outside SMM")
    vcpu.ops.emulator_leave_smm(vcpu)
    return 0


def emulator_leave_smm(vcpu):
    """Leave SMM: reset the MMU, step down to real mode through the normal
    CR/EFER write paths, let the vendor re-enter L2 if the SMI interrupted
    it, then restore the saved registers.

    Mirrors: arch/x86/kvm/smm.c: emulator_leave_smm() (the body of em_rsm()
    before v6.2)
    """
    ops = vcpu.ops
    ops.kvm_smm_changed(vcpu, False)
    cr4 = vcpu.cr4
    if cr4 & X86_CR4_PCIDE:
        ops.kvm_set_cr4(vcpu, cr4 & ~X86_CR4_PCIDE)
    cr0 = vcpu.cr0
    if cr0 & X86_CR0_PE:
        ops.kvm_set_cr0(vcpu, cr0 & ~(X86_CR0_PG | X86_CR0_PE))
    cr4 = vcpu.cr4
    if cr4 & X86_CR4_PAE:
        ops.kvm_set_cr4(vcpu, cr4 & ~X86_CR4_PAE)
    ops.set_efer(vcpu, 0)
    ops.vendor_leave_smm(vcpu)
    ops.rsm_load_state_64(vcpu)


def rsm_load_state_64(vcpu):
    """Restore EFER (without LMA), then CR3/CR4/CR0 in a legal order.

    Mirrors: arch/x86/kvm/smm.c: rsm_load_state_64()
    """
    cr0, cr3, cr4, efer = vcpu.smram
    vcpu.smram = None
    vcpu.ops.set_efer(vcpu, efer & ~EFER_LMA)
    vcpu.ops.rsm_enter_protected_mode(vcpu, cr0, cr3, cr4)


def rsm_enter_protected_mode(vcpu, cr0, cr3, cr4):
    """CR3 without its PCID, CR4 without PCIDE, CR0, then PCIDE and the PCID.

    Mirrors: arch/x86/kvm/smm.c: rsm_enter_protected_mode()
    """
    ops = vcpu.ops
    pcid = 0
    if cr4 & X86_CR4_PCIDE:
        pcid = cr3 & 0xFFF
        cr3 &= ~0xFFF
    ops.kvm_set_cr3(vcpu, cr3)
    ops.kvm_set_cr4(vcpu, cr4 & ~X86_CR4_PCIDE)
    ops.kvm_set_cr0(vcpu, cr0)
    if cr4 & X86_CR4_PCIDE:
        ops.kvm_set_cr4(vcpu, cr4)
        if pcid:
            ops.kvm_set_cr3(vcpu, cr3 | pcid)
