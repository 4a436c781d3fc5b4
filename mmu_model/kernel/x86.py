"""Guest register writes, TLB-flush requests and request servicing at VM entry.

Each function mirrors the kernel function of the same name in
arch/x86/kvm/x86.c, in its v6.18 shape; eras replace what differs.
Write paths return 0 on success or a short reason (truthy) where the kernel
returns 1 and the caller injects #GP; nothing is changed before a failure
except what the kernel itself does first (load_pdptrs()).
"""
from __future__ import annotations

from .kvm import KVM_MMU_NUM_PREV_ROOTS, KVM_MMU_ROOT_CURRENT, KVM_MMU_ROOT_PREVIOUS
from .registers import (
    CR0_KNOWN,
    CR4_FEATURE_GATES,
    CR4_GATED,
    CR4_KNOWN,
    CR4_NEVER,
    EFER_KNOWN,
    EFER_LMA,
    EFER_LME,
    GUEST_MAXPHYADDR,
    PAGE_SHIFT,
    X86_CR0_CD,
    X86_CR0_ET,
    X86_CR0_NE,
    X86_CR0_NW,
    X86_CR0_PDPTR_BITS,
    X86_CR0_PE,
    X86_CR0_PG,
    X86_CR0_WP,
    X86_CR3_PCID_MASK,
    X86_CR3_PCID_NOFLUSH,
    X86_CR4_LA57,
    X86_CR4_PAE,
    X86_CR4_PCIDE,
    X86_CR4_PDPTR_BITS,
    X86_CR4_PGE,
    X86_CR4_SMEP,
)
from .requests import KVM_REQ, kvm_check_request, kvm_clear_request, kvm_make_request

# ---------------------------------------------------------------------------
# Mode predicates (arch/x86/kvm/x86.h, kvm_cache_regs.h)

def is_paging(vcpu) -> bool:
    return bool(vcpu.cr0 & X86_CR0_PG)


def is_long_mode(vcpu) -> bool:
    return bool(vcpu.efer & EFER_LMA)


def is_pae(vcpu) -> bool:
    return bool(vcpu.cr4 & X86_CR4_PAE)


def is_pae_paging(vcpu) -> bool:
    return is_paging(vcpu) and is_pae(vcpu) and not is_long_mode(vcpu)


def is_64_bit_mode(vcpu) -> bool:
    """Simplification: the model has no code segment; CS.L is taken as 0, so
    the guest is never in 64-bit mode proper, only in compatibility mode."""
    return False


# ---------------------------------------------------------------------------
# Validity checks

def kvm_is_valid_cr0(vcpu, cr0):
    """0, or why ``cr0`` is not a legal CR0 value.

    Mirrors: arch/x86/kvm/x86.c: kvm_is_valid_cr0()
    """
    if cr0 >> 32:
        return "CR0 bits 63:32 are reserved"
    if cr0 & X86_CR0_NW and not cr0 & X86_CR0_CD:
        return "CR0.NW=1 requires CR0.CD=1"
    if cr0 & X86_CR0_PG and not cr0 & X86_CR0_PE:
        return "CR0.PG=1 requires CR0.PE=1"
    fixed = X86_CR0_PE | X86_CR0_NE | X86_CR0_PG
    if vcpu.vmxon and not vcpu.guest_mode and cr0 & fixed != fixed:
        # vmx_is_valid_cr0() -> nested_host_cr0_valid(): the VMX fixed-0 bits
        return "in VMX operation CR0.PE, CR0.NE and CR0.PG are fixed to 1"
    return 0


def kvm_is_valid_cr4(vcpu, cr4):
    """0, or why ``cr4`` sets a reserved bit or one the guest's CPUID lacks.

    Mirrors: arch/x86/kvm/x86.c: kvm_is_valid_cr4() (cr4_guest_rsvd_bits)
    """
    if cr4 & ~CR4_KNOWN or cr4 & CR4_NEVER:
        return f"CR4 value {cr4:#x} sets a reserved bit"
    if not cr4 & CR4_GATED:
        return 0
    for bit, feature in CR4_FEATURE_GATES.items():
        if cr4 & bit and not vcpu.features & feature:
            return f"CR4.{bit.name} needs CPUID.{feature.name}, which the guest lacks"
    return 0


def kvm_vcpu_is_legal_cr3(vcpu, cr3) -> bool:
    """Mirrors: arch/x86/kvm/cpuid.h: kvm_vcpu_is_legal_cr3() (no LAM)."""
    return not cr3 >> GUEST_MAXPHYADDR


# ---------------------------------------------------------------------------
# PAE PDPTRs

def load_pdptrs(vcpu, cr3) -> bool:
    """Read the four PDPTEs for ``cr3`` into the walk MMU.

    Under shadow paging, PDPTEs that differ from the cached copy free the
    current root (the special root encodes them).  Always requests
    KVM_REQ_LOAD_MMU_PGD.
    Mirrors: arch/x86/kvm/x86.c: load_pdptrs()
    """
    from .mmu import pdpte_gfn
    mmu = vcpu.walk_mmu
    pdpte = tuple((pdpte_gfn(cr3, i) << PAGE_SHIFT) | 1 for i in range(4))
    if not vcpu.kvm.tdp_enabled and pdpte != mmu.pdptrs:
        vcpu.ops.kvm_mmu_free_roots(vcpu.kvm, mmu, KVM_MMU_ROOT_CURRENT)
    mmu.pdptrs = pdpte
    kvm_make_request(KVM_REQ.LOAD_MMU_PGD, vcpu)
    return True


# ---------------------------------------------------------------------------
# CR0

def kvm_set_cr0(vcpu, cr0):
    """Guest MOV to CR0: validate, hand to the vendor, then kvm_post_set_cr0().

    Mirrors: arch/x86/kvm/x86.c: kvm_set_cr0()
    """
    ops = vcpu.ops
    old_cr0 = vcpu.cr0
    err = kvm_is_valid_cr0(vcpu, cr0)
    if err:
        return err
    cr0 |= X86_CR0_ET
    cr0 &= CR0_KNOWN                # writes to reserved bits are ignored
    if vcpu.efer & EFER_LME and not is_paging(vcpu) and cr0 & X86_CR0_PG:
        if not is_pae(vcpu):
            return "enabling paging with EFER.LME=1 requires CR4.PAE=1"
    if (not vcpu.efer & EFER_LME and cr0 & X86_CR0_PG and is_pae(vcpu)
            and (cr0 ^ old_cr0) & X86_CR0_PDPTR_BITS and not ops.load_pdptrs(vcpu, vcpu.cr3)):
        return "the PAE PDPTEs are invalid"
    if not cr0 & X86_CR0_PG and (is_64_bit_mode(vcpu) or vcpu.cr4 & X86_CR4_PCIDE):
        return "CR0.PG cannot be cleared while CR4.PCIDE=1"
    ops.set_cr0(vcpu, cr0)
    ops.kvm_post_set_cr0(vcpu, old_cr0, cr0)
    return 0


def kvm_post_set_cr0(vcpu, old_cr0, cr0):
    """After a CR0 write: a CR0.WP-only change with TDP just re-inits the MMU;
    CR0.PG 1->0 requests a guest TLB flush; any PG/WP change resets the MMU.

    Mirrors: arch/x86/kvm/x86.c: kvm_post_set_cr0() (v6.4+: 01b31714bd90,
    e40bcf9f3a18; v5.18+: b5f61c035d49)
    """
    if (cr0 ^ old_cr0) == X86_CR0_WP:
        if not cr0 & X86_CR0_PG:
            return
        if vcpu.kvm.tdp_enabled:
            vcpu.ops.kvm_init_mmu(vcpu)
            return
    if (cr0 ^ old_cr0) & X86_CR0_PG and not cr0 & X86_CR0_PG:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    if (cr0 ^ old_cr0) & vcpu.kvm.era.cr0_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)


# ---------------------------------------------------------------------------
# CR4

def kvm_set_cr4(vcpu, cr4):
    """Guest MOV to CR4: validate, hand to the vendor, then kvm_post_set_cr4().

    Mirrors: arch/x86/kvm/x86.c: kvm_set_cr4()
    """
    ops = vcpu.ops
    old_cr4 = vcpu.cr4
    err = kvm_is_valid_cr4(vcpu, cr4)
    if err:
        return err
    if is_long_mode(vcpu):
        if not cr4 & X86_CR4_PAE:
            return "CR4.PAE cannot be cleared in long mode"
        if (cr4 ^ old_cr4) & X86_CR4_LA57:
            return "CR4.LA57 cannot change in long mode"
    elif (is_paging(vcpu) and cr4 & X86_CR4_PAE and (cr4 ^ old_cr4) & X86_CR4_PDPTR_BITS
          and not ops.load_pdptrs(vcpu, vcpu.cr3)):
        return "the PAE PDPTEs are invalid"
    if cr4 & X86_CR4_PCIDE and not old_cr4 & X86_CR4_PCIDE:
        if vcpu.cr3 & X86_CR3_PCID_MASK or not is_long_mode(vcpu):
            return "CR4.PCIDE=1 requires long mode and CR3[11:0]=0"
    ops.set_cr4(vcpu, cr4)
    ops.kvm_post_set_cr4(vcpu, old_cr4, cr4)
    return 0


def kvm_post_set_cr4(vcpu, old_cr4, cr4):
    """After a CR4 write, four independent rules: role bit -> reset; shadow
    paging and PCIDE 0->1 -> unload; PGE toggle or PCIDE 1->0 -> guest flush;
    otherwise PAE toggle or SMEP 0->1 -> current flush.

    Mirrors: arch/x86/kvm/x86.c: kvm_post_set_cr4() (v5.18+: b5f61c035d49,
    f6d0a2521ce1)
    """
    changed = cr4 ^ old_cr4
    if changed & vcpu.kvm.era.cr4_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)
    if not vcpu.kvm.tdp_enabled and cr4 & X86_CR4_PCIDE and not old_cr4 & X86_CR4_PCIDE:
        vcpu.ops.kvm_mmu_unload(vcpu)
    if changed & X86_CR4_PGE or (not cr4 & X86_CR4_PCIDE and old_cr4 & X86_CR4_PCIDE):
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    elif changed & X86_CR4_PAE or (cr4 & X86_CR4_SMEP and not old_cr4 & X86_CR4_SMEP):
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)


# ---------------------------------------------------------------------------
# CR3 and PCIDs

def kvm_set_cr3(vcpu, cr3):
    """Guest MOV to CR3: switch pgd through the root cache, then flush the
    new PCID unless bit 63 (no-flush) was set with CR4.PCIDE=1.

    Mirrors: arch/x86/kvm/x86.c: kvm_set_cr3()
    """
    ops = vcpu.ops
    skip_tlb_flush = False
    pcid = 0
    if vcpu.cr4 & X86_CR4_PCIDE:
        skip_tlb_flush = bool(cr3 & X86_CR3_PCID_NOFLUSH)
        cr3 &= ~X86_CR3_PCID_NOFLUSH
        pcid = cr3 & X86_CR3_PCID_MASK
    if not (cr3 == vcpu.cr3 and not is_pae_paging(vcpu)):
        if not ops.kvm_vcpu_is_legal_cr3(vcpu, cr3):
            return f"CR3 value {cr3:#x} sets bits above MAXPHYADDR ({GUEST_MAXPHYADDR})"
        if is_pae_paging(vcpu) and not ops.load_pdptrs(vcpu, cr3):
            return "the PAE PDPTEs are invalid"
        if cr3 != vcpu.cr3:
            ops.kvm_mmu_new_pgd(vcpu, cr3)
        vcpu.cr3 = cr3
    if not skip_tlb_flush:
        ops.kvm_invalidate_pcid(vcpu, pcid)
    return 0


def kvm_invalidate_pcid(vcpu, pcid):
    """Invalidate one PCID: under TDP a guest TLB flush; under shadow paging
    sync and flush if it is the active PCID, and free prev roots that use it.

    Mirrors: arch/x86/kvm/x86.c: kvm_invalidate_pcid()
    """
    if vcpu.kvm.tdp_enabled:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
        return
    if vcpu.active_pcid() == pcid:
        kvm_make_request(KVM_REQ.MMU_SYNC, vcpu)
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)
    if not vcpu.cr4 & X86_CR4_PCIDE:
        return
    mmu = vcpu.mmu
    roots_to_free = 0
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        if vcpu.pcid(mmu.prev_roots[i].pgd) == pcid:
            roots_to_free |= KVM_MMU_ROOT_PREVIOUS(i)
    vcpu.ops.kvm_mmu_free_roots(vcpu.kvm, mmu, roots_to_free)


def invpcid_hw_check(vcpu, type, pcid, gla):
    """0, or the #GP the architecture specifies for this INVPCID operand.

    The same checks whether the CPU executes INVPCID or KVM emulates it.
    """
    from .mmu import is_noncanonical_address
    if pcid >> 12:
        return ("GP", "the INVPCID descriptor's PCID is above 0xfff")
    pcid_enabled = bool(vcpu.cr4 & X86_CR4_PCIDE)
    if type in (0, 1) and not pcid_enabled and pcid:
        return ("GP", f"INVPCID type {type} needs PCID 0 while CR4.PCIDE=0")
    if type == 0 and is_noncanonical_address(vcpu, gla):
        return ("GP", f"INVPCID type 0 needs a canonical address, not {gla:#x}")
    if type > 3:
        return ("GP", f"INVPCID type {type} does not exist")
    return 0


def kvm_handle_invpcid(vcpu, type, pcid, gla):
    """INVPCID as KVM emulates it; returns 0 or ("GP", reason).

    Types 2 and 3 both become a guest TLB flush: KVM does not mark global
    entries in shadow pages.
    Mirrors: arch/x86/kvm/x86.c: kvm_handle_invpcid()
    """
    err = invpcid_hw_check(vcpu, type, pcid, gla)
    if err:
        return err
    if type == 0:
        vcpu.ops.kvm_mmu_invpcid_gva(vcpu, gla, pcid)
    elif type == 1:
        vcpu.ops.kvm_invalidate_pcid(vcpu, pcid)
    else:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    return 0


# ---------------------------------------------------------------------------
# EFER

def set_efer(vcpu, efer, host_initiated=False):
    """WRMSR EFER: LMA is kept from the current state; a change in the era's
    EFER role bits resets the MMU.

    Mirrors: arch/x86/kvm/x86.c: set_efer() (reset on LME|NX from v5.18)
    """
    old_efer = vcpu.efer
    if efer & ~EFER_KNOWN:
        return f"EFER value {efer:#x} sets a reserved bit"
    if not host_initiated and is_paging(vcpu) and (old_efer ^ efer) & EFER_LME:
        return "EFER.LME cannot change while paging is on"
    efer = (efer & ~EFER_LMA) | (old_efer & EFER_LMA)
    vcpu.ops.set_efer_vendor(vcpu, efer)
    if (efer ^ old_efer) & vcpu.kvm.era.efer_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)
    return 0


# ---------------------------------------------------------------------------
# KVM_SET_SREGS and INIT

def kvm_is_valid_sregs(vcpu, sregs):
    """0, or why userspace's special registers are inconsistent.

    Mirrors: arch/x86/kvm/x86.c: kvm_is_valid_sregs()
    """
    if sregs["efer"] & EFER_LME and sregs["cr0"] & X86_CR0_PG:
        if not sregs["cr4"] & X86_CR4_PAE or not sregs["efer"] & EFER_LMA:
            return "EFER.LME with CR0.PG needs CR4.PAE and EFER.LMA"
        if not vcpu.ops.kvm_vcpu_is_legal_cr3(vcpu, sregs["cr3"]):
            return f"CR3 value {sregs['cr3']:#x} sets bits above MAXPHYADDR"
    elif sregs["efer"] & EFER_LMA:
        return "EFER.LMA=1 outside long mode"
    if sregs["efer"] & ~EFER_KNOWN:
        return f"EFER value {sregs['efer']:#x} sets a reserved bit"
    return kvm_is_valid_cr4(vcpu, sregs["cr4"]) or kvm_is_valid_cr0(vcpu, sregs["cr0"])


def __set_sregs(vcpu, sregs):
    """KVM_SET_SREGS: write CR3/EFER/CR0/CR4 without the post-write hooks and
    reset the MMU if any of them changed (v6.6+: and flush the guest TLB).

    Mirrors: arch/x86/kvm/x86.c: __set_sregs(), __set_sregs_common()
    """
    err = kvm_is_valid_sregs(vcpu, sregs)
    if err:
        return err
    ops = vcpu.ops
    mmu_reset_needed = vcpu.cr3 != sregs["cr3"]
    vcpu.cr3 = sregs["cr3"]
    mmu_reset_needed |= vcpu.efer != sregs["efer"]
    ops.set_efer_vendor(vcpu, sregs["efer"])
    mmu_reset_needed |= vcpu.cr0 != sregs["cr0"]
    ops.set_cr0(vcpu, sregs["cr0"])
    mmu_reset_needed |= vcpu.cr4 != sregs["cr4"]
    ops.set_cr4(vcpu, sregs["cr4"])
    if is_pae_paging(vcpu):
        ops.load_pdptrs(vcpu, vcpu.cr3)
        mmu_reset_needed = True
    if mmu_reset_needed:
        ops.kvm_mmu_reset_context(vcpu)
        if vcpu.kvm.era.sregs_flush_guest:
            kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    return 0


def kvm_vcpu_reset(vcpu, init_event):
    """INIT: registers to their reset values; if paging was on, flush the
    guest TLB and reset the MMU; an INIT always flushes the guest TLB.

    Mirrors: arch/x86/kvm/x86.c: kvm_vcpu_reset()
    """
    ops = vcpu.ops
    old_cr0 = vcpu.cr0
    vcpu.smi_pending = False
    cr0 = X86_CR0_ET | (old_cr0 & (X86_CR0_NW | X86_CR0_CD) if init_event
                        else X86_CR0_NW | X86_CR0_CD)
    ops.set_cr0(vcpu, cr0)
    ops.set_cr4(vcpu, 0)
    ops.set_efer_vendor(vcpu, 0)
    vcpu.cr3 = 0
    if old_cr0 & X86_CR0_PG:
        if vcpu.kvm.era.reset_flushes_on_pg:
            kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
        ops.kvm_mmu_reset_context(vcpu)
    if init_event:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)


def __apic_accept_irq(vcpu):
    """An INIT arrives: latch it in the local APIC and request event delivery.

    Mirrors: arch/x86/kvm/lapic.c: __apic_accept_irq() (APIC_DM_INIT)
    """
    vcpu.init_latched = True
    kvm_make_request(KVM_REQ.EVENT, vcpu)


def kvm_apic_accept_events(vcpu):
    """Deliver a pending INIT.  While L2 runs the INIT is L1's: it becomes a
    nested VM-exit (VMX: the INIT-signal exit; SVM: the model's L1
    intercepts INIT).  Otherwise it stays latched while the vCPU is in SMM or
    while the vendor blocks it (L1 in VMX root operation), and resets the
    vCPU when neither holds.

    Mirrors: arch/x86/kvm/lapic.c: kvm_apic_accept_events(),
    kvm_apic_init_sipi_allowed(); vmx/nested.c: vmx_check_nested_events()
    (EXIT_REASON_INIT_SIGNAL) / svm/nested.c: svm_check_nested_events()
    """
    from .vendor import apic_init_signal_blocked
    if not vcpu.init_latched:
        return
    if vcpu.guest_mode and not vcpu.smm:
        vcpu.init_latched = False
        vcpu.ops.nested_vmx_vmexit(vcpu)
        return
    if vcpu.smm or apic_init_signal_blocked(vcpu):
        return
    vcpu.init_latched = False
    vcpu.ops.kvm_vcpu_reset(vcpu, True)


# ---------------------------------------------------------------------------
# TLB flushes and VM entry

def kvm_vcpu_flush_tlb_current(vcpu):
    """Mirrors: arch/x86/kvm/x86.c: kvm_vcpu_flush_tlb_current()."""
    vcpu.ops.flush_tlb_current(vcpu)


def kvm_vcpu_flush_tlb_guest(vcpu):
    """Flush the guest's TLB; under shadow paging first sync the current root
    and free every unsync previous root.

    Mirrors: arch/x86/kvm/x86.c: kvm_vcpu_flush_tlb_guest() (v5.16+)
    """
    ops = vcpu.ops
    if not vcpu.kvm.tdp_enabled:
        ops.kvm_mmu_sync_roots(vcpu)
        ops.kvm_mmu_sync_prev_roots(vcpu)
    ops.flush_tlb_guest(vcpu)


def kvm_vcpu_flush_tlb_all(vcpu):
    """Mirrors: arch/x86/kvm/x86.c: kvm_vcpu_flush_tlb_all()."""
    vcpu.ops.flush_tlb_all(vcpu)


def kvm_service_local_tlb_flush_requests(vcpu):
    """FLUSH_CURRENT first, then FLUSH_GUEST.

    Mirrors: arch/x86/kvm/x86.c: kvm_service_local_tlb_flush_requests()
    """
    if kvm_check_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu):
        vcpu.ops.kvm_vcpu_flush_tlb_current(vcpu)
    if kvm_check_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu):
        vcpu.ops.kvm_vcpu_flush_tlb_guest(vcpu)


def kvm_check_and_inject_events(vcpu):
    """Deliver a pending SMI unless the vCPU is already in SMM.

    Mirrors: arch/x86/kvm/x86.c: kvm_check_and_inject_events() (SMI part)
    """
    if vcpu.smi_pending and not vcpu.smm:
        vcpu.smi_pending = False
        vcpu.ops.enter_smm(vcpu)


def vcpu_enter_guest(vcpu):
    """Service requests in the kernel's order, deliver events, load a root.

    Loops while servicing raised new requests, as the kernel does when it
    cancels an entry because a request is pending.
    Mirrors: arch/x86/kvm/x86.c: vcpu_enter_guest()
    """
    ops = vcpu.ops
    era = vcpu.kvm.era
    for _ in range(8):
        if vcpu.requests:
            if era.has_mmu_reload and kvm_check_request(KVM_REQ.MMU_RELOAD, vcpu):
                ops.kvm_mmu_unload(vcpu)
                for req in era.reload_clears:
                    kvm_clear_request(req, vcpu)
            if kvm_check_request(KVM_REQ.MMU_FREE_OBSOLETE_ROOTS, vcpu):
                ops.kvm_mmu_free_obsolete_roots(vcpu)
            for req, name in era.entry_requests:      # requests an unmerged era adds
                if kvm_check_request(req, vcpu):
                    getattr(ops, name)(vcpu)
            if kvm_check_request(KVM_REQ.MMU_SYNC, vcpu):
                ops.kvm_mmu_sync_roots(vcpu)
            if kvm_check_request(KVM_REQ.LOAD_MMU_PGD, vcpu):
                ops.kvm_mmu_load_pgd(vcpu)
            if kvm_check_request(KVM_REQ.TLB_FLUSH, vcpu):
                ops.kvm_vcpu_flush_tlb_all(vcpu)
                kvm_clear_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)
            ops.kvm_service_local_tlb_flush_requests(vcpu)
            if kvm_check_request(KVM_REQ.SMI, vcpu):
                ops.process_smi(vcpu)
        if kvm_check_request(KVM_REQ.EVENT, vcpu):
            ops.kvm_apic_accept_events(vcpu)
            ops.kvm_check_and_inject_events(vcpu)
        ops.kvm_mmu_reload(vcpu)
        if not vcpu.requests:
            return
    raise RuntimeError("requests kept being raised at VM entry")
