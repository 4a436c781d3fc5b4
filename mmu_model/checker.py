"""The architectural checker: could the guest see a stale translation?

After every step, for every address each vCPU could touch, compare the
translation the guest would get now - from the hardware TLB, else (shadow
paging) from the shadow root KVM loaded, else from its own tables - with the
set the architecture allows (guest.ArchTlb).  Anything outside it is a
violation, reported with the step whose invalidation should have removed it.

The guest's memory and TLBs are not KVM state: this module keeps them beside
the model and drives the guest's side of the ``access`` and ``write_pte``
events.  Permissions are not checked, only which entry (frame and flags) the
guest would use.
"""
from __future__ import annotations

from .guest import PTE_P, ArchTlb, GuestMemory, HwTlb, describe
from .mmu import is_noncanonical_address, page_for_addr
from .registers import (
    EFER_LMA,
    PAGE_SHIFT,
    X86_CR0_PG,
    X86_CR3_PCID_MASK,
    X86_CR3_PCID_NOFLUSH,
    X86_CR4_PAE,
    X86_CR4_PCIDE,
    X86_CR4_PGE,
    X86_CR4_SMEP,
)
from .vendor import hw_tag


def attach(kvm) -> None:
    """Give the VM guest memory and each vCPU an architectural and a hardware TLB."""
    kvm.guest = GuestMemory()
    for vcpu in kvm.vcpus:
        vcpu.arch_tlb = ArchTlb()
        vcpu.hwtlb = HwTlb()


def space_of(vcpu) -> int:
    return (vcpu.cr3 & ~X86_CR3_PCID_MASK) >> PAGE_SHIFT


def observe_all(kvm) -> None:
    """Every running vCPU may cache what its active tables map right now."""
    for vcpu in kvm.vcpus:
        if vcpu.cr0 & X86_CR0_PG and not vcpu.smm:
            vcpu.arch_tlb.observe(vcpu.active_pcid(), kvm.guest.table(space_of(vcpu)))


def guest_view(vcpu, addr):
    """(entry, source) the guest would use for ``addr`` now, without side effects.

    The hardware TLB first; then, under shadow paging, the shadow root's
    translation; then the guest's own tables (a TDP walk, or the fault KVM
    would take to shadow the entry).
    """
    kvm = vcpu.kvm
    pcid = vcpu.active_pcid()
    hit = vcpu.hwtlb.lookup(pcid, addr, hw_tag(vcpu))
    if hit is not None:
        return hit, "tlb"
    root = vcpu.mmu.root.hpa
    if not kvm.tdp_enabled and root is not None and not vcpu.mmu.root_role.direct:
        sp = page_for_addr(root, addr)
        if sp is not None and addr in sp.sptes:
            return sp.sptes[addr], "shadow"
    return kvm.guest.read(space_of(vcpu), addr), "walk"


def _candidate_addrs(vcpu):
    kvm = vcpu.kvm
    addrs = set(kvm.guest.table(space_of(vcpu)))
    addrs.update(a for (_p, a) in vcpu.hwtlb.entries)
    root = vcpu.mmu.root.hpa
    if root is not None and not kvm.tdp_enabled:
        for sp in ([root] if not hasattr(root, "entries") else [e for e in root.entries if e]):
            addrs.update(sp.sptes)
    if not vcpu.efer & EFER_LMA:
        addrs = {a for a in addrs if a < (1 << 32)}
    return sorted(addrs)


def violations(kvm) -> list[dict]:
    """Translations any vCPU could use now that the architecture invalidated."""
    found = []
    for vcpu in kvm.vcpus:
        if not vcpu.cr0 & X86_CR0_PG or vcpu.smm:
            continue
        pcid = vcpu.active_pcid()
        memory = kvm.guest.table(space_of(vcpu))
        for addr in _candidate_addrs(vcpu):
            got, source = guest_view(vcpu, addr)
            if got is None or not got & PTE_P:
                continue
            expected = memory.get(addr)
            if got == expected or got in vcpu.arch_tlb.allowed(pcid, addr):
                continue
            removed = vcpu.arch_tlb.removed
            at = removed.get((pcid, addr, got))
            if at is None:
                at = max((s for (p, a, v), s in removed.items() if a == addr and v == got),
                         default=None)
            found.append({"vcpu": vcpu.vcpu_id, "addr": hex(addr), "pcid": pcid,
                          "stale": describe(got), "expected": describe(expected),
                          "source": source, "invalidated_by_step": at})
    return found


# ---------------------------------------------------------------------------
# What the architecture invalidates (x86-tlb-rules §1.6), and what the CPU
# itself does when it executes the instruction natively (TDP, no VM exit).

def arch_effects(vcpu, ev, before, step, native: bool) -> None:
    """Apply the SDM's minimum invalidations of a completed guest action to the
    vCPU's architectural TLB, and - when the CPU ran it without an exit - to
    its hardware TLB too."""
    op = ev["op"]

    def each(method, *args):
        getattr(vcpu.arch_tlb, method)(step, *args)
        if native:
            getattr(vcpu.hwtlb, method)(*args)

    if op == "mov_cr0":
        if before["cr0"] & X86_CR0_PG and not vcpu.cr0 & X86_CR0_PG:
            each("flush_all")
    elif op == "mov_cr3":
        if before["cr4"] & X86_CR4_PCIDE:
            if not ev["value"] & X86_CR3_PCID_NOFLUSH:
                each("flush_pcid_nonglobal", ev["value"] & X86_CR3_PCID_MASK)
        else:
            each("flush_nonglobal")
    elif op == "mov_cr4":
        changed = before["cr4"] ^ vcpu.cr4
        if changed & X86_CR4_PGE or (before["cr4"] & X86_CR4_PCIDE and not vcpu.cr4 & X86_CR4_PCIDE):
            each("flush_all")
        elif changed & X86_CR4_PAE or (vcpu.cr4 & X86_CR4_SMEP and not before["cr4"] & X86_CR4_SMEP):
            each("flush_pcid", vcpu.pcid(before["cr3"]))
    elif op == "invlpg":
        if not is_noncanonical_address(vcpu, ev["addr"]):
            each("flush_addr", vcpu.active_pcid(), ev["addr"])
    elif op == "invpcid":
        t = ev["type"]
        if t == 0:
            each("flush_pcid_addr_nonglobal", ev["pcid"], ev["addr"])
        elif t == 1:
            each("flush_pcid_nonglobal", ev["pcid"])
        elif t == 2:
            each("flush_all")
        elif t == 3:
            each("flush_nonglobal")
    elif op in ("smi", "rsm", "init"):
        # SMI and RSM (SDM 34.14, default treatment) and INIT flush everything;
        # an SMI or INIT that arrives in SMM is latched and does nothing yet.
        delivered = {"smi": not before["smm"] and vcpu.smm, "rsm": True,
                     "init": not before["smm"]}[op]
        if delivered:
            vcpu.arch_tlb.flush_all(step)


def on_access(vcpu, ev):
    """The guest touches ``addr``: a TLB hit, a walk (TDP) or a shadow-page
    lookup, or a page fault that KVM fixes by shadowing the guest's entry (or
    reflects as #PF when the guest's entry is not present)."""
    kvm = vcpu.kvm
    addr = ev["addr"]
    if not vcpu.cr0 & X86_CR0_PG:
        return None, "paging is off: the address is the physical address", False
    if is_noncanonical_address(vcpu, addr):
        return "GP", f"non-canonical address {addr:#x}", False
    pcid = vcpu.active_pcid()
    tag = hw_tag(vcpu)
    got, source = guest_view(vcpu, addr)
    kvm.step.translation = None
    intercepted = False
    if got is None or not got & PTE_P:
        # Not present anywhere the CPU looks: a #PF (via KVM under shadow paging).
        vcpu.arch_tlb.flush_pcid_addr_nonglobal(kvm.step.index, pcid, addr)
        vcpu.hwtlb.flush_pcid_addr_nonglobal(pcid, addr)
        return "PF", f"{addr:#x} is not mapped in this address space", not kvm.tdp_enabled
    if source == "walk" and not kvm.tdp_enabled and not vcpu.mmu.root_role.direct:
        # KVM's page fault handler shadows the guest's entry (FNAME(page_fault)).
        sp = page_for_addr(vcpu.mmu.root.hpa, addr)
        if sp is not None:
            sp.sptes[addr] = got
            sp.unsync_addrs.discard(addr)
        intercepted, source = True, "shadow"
    if source != "tlb":
        vcpu.hwtlb.fill(pcid, addr, got, tag)
    kvm.step.translation = {"entry": describe(got), "source": source}
    return None, None, intercepted


def on_write_pte(vcpu, ev):
    """The guest rewrites a leaf entry; under shadow paging the leaf table is
    unsync, so KVM's shadow of it keeps the old entry until a sync."""
    kvm = vcpu.kvm
    space = (ev["cr3"] & ~X86_CR3_PCID_MASK & ~X86_CR3_PCID_NOFLUSH) >> PAGE_SHIFT
    kvm.guest.write(space, ev["addr"], ev["value"])
    for sp in kvm.mmu_page_hash.values():
        if sp.space == space and ev["addr"] in sp.sptes:
            sp.unsync_addrs.add(ev["addr"])
    return None, "the write goes to guest memory; the leaf table is unsync, so it does not exit", False
