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

from ..kernel.kvm import SpteMap, arch_context, ept_table
from ..kernel.mmu import is_noncanonical_address, page_for_addr, root_pages
from ..kernel.registers import (
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
from ..kernel.vendor import hw_tag
from .guest import (
    EPT_RWX,
    PTE_FRAME,
    PTE_P,
    ArchTlb,
    EptArchTlb,
    GuestMemory,
    HwTlb,
    describe,
    describe_ept,
)


def arch_tlb(vcpu) -> ArchTlb:
    """The ArchTlb of the context the guest runs in now: (vpid, EPT table)
    as L1 sees it - (0, None) for L1 itself, (vpid12, EPTP frame) for L2."""
    key = arch_context(vcpu)
    tlb = vcpu.arch_tlbs.get(key)
    if tlb is None:
        tlb = vcpu.arch_tlbs[key] = ArchTlb()
    return tlb


def attach(kvm) -> None:
    """Give the VM guest memory and each vCPU its architectural TLBs (one per
    VPID/EPT context, and L2's guest-physical one) and a hardware TLB."""
    kvm.guest = GuestMemory()
    for vcpu in kvm.vcpus:
        vcpu.arch_tlbs = {}
        vcpu.ept_arch = EptArchTlb()
        vcpu.hwtlb = HwTlb()


def space_of(vcpu) -> int:
    return (vcpu.cr3 & ~X86_CR3_PCID_MASK) >> PAGE_SHIFT


def _state(vcpu) -> tuple:
    """All that one vCPU's view and its architectural TLB depend on: its
    registers and roots, the versions of its TLBs, and the change counts of
    guest memory and of every shadow page.  While this is unchanged, observing
    adds nothing and the vCPU's violations are what they were."""
    v = vcpu.vmcs12
    ctx = vcpu.arch_tlbs.get(arch_context(vcpu))
    return (vcpu.kvm.guest.version, SpteMap.changes, vcpu.cr0, vcpu.cr3, vcpu.cr4, vcpu.efer,
            vcpu.smm, vcpu.guest_mode, vcpu.mmu.root, vcpu.mmu.root_role, vcpu.guest_mmu.root,
            vcpu.hwtlb.version, vcpu.ept_arch.version, ctx.version if ctx is not None else None,
            v.ept_pointer if v is not None else None,
            v.virtual_processor_id if v is not None else None)


def observe_all(kvm) -> None:
    """Every running vCPU may cache what its active tables map right now (and,
    while L2 runs, what L1's EPT/NPT table maps).  A vCPU whose state did not
    change since the checker last looked has nothing new to cache."""
    for vcpu in kvm.vcpus:
        if vcpu.checked is None or vcpu.checked[0] != _state(vcpu):
            observe(vcpu)


def check_all(kvm) -> list[dict]:
    """observe_all(), then violations(): the vCPUs whose state changed since
    the last look are looked at again; the others' violations are as they were."""
    found = []
    for vcpu in kvm.vcpus:
        checked = vcpu.checked
        if checked is None or checked[0] != _state(vcpu):
            observe(vcpu)
            mine = vcpu_violations(vcpu)
            vcpu.checked = checked = (_state(vcpu), mine)
        found += checked[1]
    return found


def observe(vcpu) -> None:
    """What one running vCPU may cache now (see observe_all)."""
    kvm = vcpu.kvm
    if vcpu.cr0 & X86_CR0_PG and not vcpu.smm:
        arch_tlb(vcpu).observe(vcpu.active_pcid(), kvm.guest.table(space_of(vcpu)))
    if vcpu.guest_mode:
        table = ept_table(vcpu.vmcs12.ept_pointer)
        seen = (kvm.guest.version, table)
        if vcpu.ept_arch.seen != seen:      # nothing to add if nothing changed
            vcpu.ept_arch.observe(table, {g: kvm.guest.ept_read(table, g)
                                          for g in kvm.guest.l2_gpas(table)})
            vcpu.ept_arch.seen = seen


def ept_view(vcpu, gpa):
    """(EPT entry, source) L2 would use for guest-physical page ``gpa`` now:
    the hardware's guest-physical mapping, else L0's shadow-EPT entry, else
    L1's own table (an EPT violation L0 handles by shadowing the entry)."""
    hit = vcpu.hwtlb.gpa.get((hw_tag(vcpu)[1], gpa))
    if hit is not None:
        return hit, "tlb"
    sp = page_for_addr(vcpu.guest_mmu.root.hpa, gpa)
    if sp is not None and gpa in sp.sptes:
        return sp.sptes[gpa], "shadow"
    return vcpu.kvm.guest.ept_read(ept_table(vcpu.vmcs12.ept_pointer), gpa), "walk"


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
        found += vcpu_violations(vcpu)
    return found


def vcpu_violations(vcpu) -> list[dict]:
    """Translations this vCPU could use now that the architecture invalidated."""
    kvm = vcpu.kvm
    found = []
    if not vcpu.cr0 & X86_CR0_PG or vcpu.smm:
        return found
    pcid = vcpu.active_pcid()
    memory = kvm.guest.table(space_of(vcpu))
    for addr in _candidate_addrs(vcpu):
        got, source = guest_view(vcpu, addr)
        if got is None or not got & PTE_P:
            continue
        expected = memory.get(addr)
        if got == expected or got in arch_tlb(vcpu).allowed(pcid, addr):
            continue
        removed = arch_tlb(vcpu).removed
        at = removed.get((pcid, addr, got))
        if at is None:
            at = max((s for (p, a, v), s in removed.items() if a == addr and v == got),
                     default=None)
        found.append({"vcpu": vcpu.vcpu_id, "addr": hex(addr), "pcid": pcid,
                      "stale": describe(got), "expected": describe(expected),
                      "source": source, "invalidated_by_step": at})
    if vcpu.guest_mode:
        found += ept_violations(vcpu)
    return found


def ept_violations(vcpu) -> list[dict]:
    """L2 guest-physical pages whose translation L1 invalidated (INVEPT or an
    EPT violation) but which L2 could still use."""
    kvm = vcpu.kvm
    table = ept_table(vcpu.vmcs12.ept_pointer)
    # Only what the hardware or L0's shadow holds can be stale; the rest is a walk.
    tag = hw_tag(vcpu)[1]
    gpas = {g for (t, g) in vcpu.hwtlb.gpa if t == tag}
    for sp in root_pages(vcpu.guest_mmu.root.hpa):
        gpas.update(sp.sptes)
    found = []
    for gpa in sorted(gpas):
        got, source = ept_view(vcpu, gpa)
        if source == "walk" or not got & EPT_RWX:
            continue
        expected = kvm.guest.ept_read(table, gpa)
        if got == expected or got in vcpu.ept_arch.allowed(table, gpa):
            continue
        found.append({"vcpu": vcpu.vcpu_id, "addr": hex(gpa), "pcid": None, "kind": "ept",
                      "stale": describe_ept(got), "expected": describe_ept(expected),
                      "source": source,
                      "invalidated_by_step": vcpu.ept_arch.removed.get((table, gpa, got))})
    return found


# ---------------------------------------------------------------------------
# What the architecture invalidates (x86-tlb-rules §1.6), and what the CPU
# itself does when it executes the instruction natively (TDP, no VM exit).

def arch_effects(vcpu, ev, before, step, native: bool) -> None:
    """Apply the SDM's minimum invalidations of a completed guest action to the
    vCPU's architectural TLB, and - when the CPU ran it without an exit - to
    its hardware TLB too."""
    op = ev["op"]
    vpid = hw_tag(vcpu)[0]
    arch_tlb(vcpu)                           # the current context exists from here on
    ctx_vpid = arch_context(vcpu)[0]
    # Guest instructions act on the current VPID "for all EP4TAs" (SDM
    # 28.3.3.1): every EPT table's context of L2's vpid12, not just the current.
    same_vpid = [t for (v, _table), t in vcpu.arch_tlbs.items() if v == ctx_vpid]

    def each(method, *args):
        for tlb in same_vpid:
            getattr(tlb, method)(step, *args)
        if native:
            if method == "flush_all":
                vcpu.hwtlb.flush_vpid(vpid)        # linear and combined mappings only
            else:
                getattr(vcpu.hwtlb, method)(*args, vpid=vpid)

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
        # SMI (SDM 34.14.1, default treatment): VPID 0's linear and combined
        # mappings; RSM (34.14.2): every VPID's; INIT: everything.  An SMI or
        # INIT that arrives in SMM is latched and does nothing yet, as is an
        # INIT in VMX root operation; an INIT while L2 runs is L1's nested
        # VM-exit (see nested_transition).
        if op == "init" and before.get("guest_mode"):
            nested_transition(vcpu, step)
            return
        delivered = {"smi": not before["smm"] and vcpu.smm, "rsm": True,
                     "init": not vcpu.init_latched}[op]
        if not delivered:
            return
        if op == "smi" and before.get("guest_mode"):
            nested_transition(vcpu, step)
        for (ctx_vpid, _table), tlb in vcpu.arch_tlbs.items():
            if op != "smi" or ctx_vpid == 0:
                tlb.flush_all(step)
        if op == "rsm" and before.get("guest_mode") is False and vcpu.guest_mode:
            nested_transition(vcpu, step)
    elif op in ("vmentry", "vmexit"):
        # The step reached KVM without a fault: a transition happened (an
        # entry with an INIT pending is two: in, and straight back out).
        nested_transition(vcpu, step)
    elif op == "invept":
        table = ept_table(ev["eptp"])
        single = ev["type"] == 1
        for (_v, t), tlb in vcpu.arch_tlbs.items():
            if t is not None and (not single or t == table):
                tlb.flush_all(step)
        vcpu.ept_arch.flush_table(step, table) if single else vcpu.ept_arch.flush_all(step)
    elif op == "invvpid":
        t, target = ev["type"], ev["vpid"]
        for (v, _table), tlb in vcpu.arch_tlbs.items():
            if t == 2 and v != 0 or t != 2 and v == target:
                {0: lambda: tlb.flush_addr_all_pcids(step, ev["addr"]),
                 1: lambda: tlb.flush_all(step), 2: lambda: tlb.flush_all(step),
                 3: lambda: tlb.flush_nonglobal(step)}[t]()


def nested_transition(vcpu, step) -> None:
    """A nested VM-entry or VM-exit: with VPID off in vmcs12 it invalidates
    VPID 0's linear and combined mappings, all PCIDs and EP4TAs (SDM 28.3.3.3);
    with VPID on it need not invalidate anything.

    SVM has no VPID; the model's vmcb12 has none, so SVM transitions are held
    to the VPID-off rule.  That is stricter than the APM (VMRUN flushes only
    what vmcb12's TLB_CONTROL asks), and KVM meets it because it flushes the
    one ASID on every VMRUN and #VMEXIT (nested_svm_transition_tlb_flush)."""
    if not vcpu.vmcs12.virtual_processor_id:
        for (ctx_vpid, _table), tlb in vcpu.arch_tlbs.items():
            if ctx_vpid == 0:
                tlb.flush_all(step)


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
        arch_tlb(vcpu).flush_pcid_addr_nonglobal(kvm.step.index, pcid, addr)
        vcpu.hwtlb.flush_pcid_addr_nonglobal(pcid, addr)
        return "PF", f"{addr:#x} is not mapped in this address space", not kvm.tdp_enabled
    if source == "walk" and not kvm.tdp_enabled and not vcpu.mmu.root_role.direct:
        # KVM's page fault handler shadows the guest's entry (FNAME(page_fault)).
        sp = page_for_addr(vcpu.mmu.root.hpa, addr)
        if sp is not None:
            sp.sptes[addr] = got
            sp.unsync_addrs.discard(addr)
        intercepted, source = True, "shadow"
    translation = {"entry": describe(got), "source": source}
    note = None
    if vcpu.guest_mode:
        # L2's guest-physical address goes through L1's EPT/NPT, as L0 shadows it.
        gpa = got & PTE_FRAME
        table = ept_table(vcpu.vmcs12.ept_pointer)
        ept, esource = ept_view(vcpu, gpa)
        if not ept & EPT_RWX:
            # L1's entry is not present: an EPT violation that L0 reflects to L1.
            vcpu.ept_arch.flush_gpa(kvm.step.index, table, gpa)
            vcpu.hwtlb.drop_gpa((tag[1], gpa))
            vcpu.ops.nested_vmx_vmexit(vcpu)
            nested_transition(vcpu, kvm.step.index)
            return None, (f"EPT violation: L1's table {table:#x} does not map L2 page {gpa:#x}; "
                          "L0 reflects it to L1 (nested VM-exit)"), True
        if esource == "walk":
            # L0's EPT-violation handler shadows L1's entry (FNAME(page_fault), EPT flavour).
            sp = page_for_addr(vcpu.guest_mmu.root.hpa, gpa)
            if sp is not None:
                sp.sptes[gpa] = ept
                sp.unsync_addrs.discard(gpa)
            intercepted, esource = True, "shadow"
            note = f"EPT violation at L2 page {gpa:#x}: L0 shadows L1's entry and resumes L2"
        vcpu.hwtlb.set_gpa((tag[1], gpa), ept)
        translation.update(ept=describe_ept(ept), ept_source=esource)
    if source != "tlb":
        vcpu.hwtlb.fill(pcid, addr, got, tag)
    kvm.step.translation = translation
    return None, note, intercepted


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


def on_write_ept(vcpu, ev):
    """L1 rewrites a leaf entry of one of its EPT/NPT tables.  L0's shadow of
    that table is unsync, so the write does not exit and the shadow keeps the
    old entry until L1's INVEPT frees the root (the reload syncs it)."""
    kvm = vcpu.kvm
    if vcpu.guest_mode:
        return None, "L2 is running: L1's EPT tables are not L2's memory (send vmexit first)", False
    table = ept_table(ev["eptp"])
    kvm.guest.ept_write(table, ev["gpa"] & PTE_FRAME, ev["value"])
    for sp in kvm.mmu_page_hash.values():
        if sp.space == ("ept", table) and ev["gpa"] & PTE_FRAME in sp.sptes:
            sp.unsync_addrs.add(ev["gpa"] & PTE_FRAME)
    return None, "L1 writes its EPT table; L0's shadow of it is unsync, so it does not exit", False
