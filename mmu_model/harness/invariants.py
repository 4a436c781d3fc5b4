"""Properties that hold after every step, whatever the era: used by the tests.

``check_invariants(kvm)`` returns a list of problems (empty when all hold):
every root's reference count equals the references that vCPU slots (and,
from v6.4, the TDP MMU) hold; no slot points at a destroyed root; each vCPU
runs on a root built for its MMU's root role and, for shadow roots, its CR3.
"""
from __future__ import annotations

from collections import Counter

from ..kernel.kvm import KvmMmuPage, KvmPaeRoot


def slot_references(kvm) -> Counter:
    """How many vCPU slots reference each root page (PAE roots count per entry)."""
    refs: Counter = Counter()
    for vcpu in kvm.vcpus:
        for mmu in (vcpu.root_mmu, vcpu.guest_mmu):
            for _label, info in mmu.slots():
                hpa = info.hpa
                if isinstance(hpa, KvmPaeRoot):
                    refs.update(e for e in hpa.entries if e is not None)
                elif hpa is not None:
                    refs[hpa] += 1
    return refs


def check_invariants(kvm) -> list[str]:
    problems = []
    refs = slot_references(kvm)
    pages = set(kvm.mmu_page_hash.values()) | set(kvm.tdp_mmu_roots) | set(refs)
    for sp in sorted(pages, key=lambda p: p.id):
        expected = refs.get(sp, 0) + (1 if sp.tdp_mmu_ref else 0)
        if sp.destroyed:
            if refs.get(sp):
                problems.append(f"root {sp.id} is destroyed but {refs[sp]} slot(s) still point at it")
            continue
        if sp.root_count != expected:
            problems.append(f"root {sp.id}: root_count {sp.root_count}, but {expected} reference(s) exist")
    for sp in kvm.tdp_mmu_roots:
        if sp.root_count <= 0:
            problems.append(f"TDP MMU root {sp.id} is on the list with no reference")
    for vcpu in kvm.vcpus:
        mmu = vcpu.mmu
        for label, info in mmu.slots():
            if info.hpa is not None and not isinstance(info.hpa, (KvmMmuPage, KvmPaeRoot)):
                problems.append(f"vCPU {vcpu.vcpu_id} {label}: not a root: {info.hpa!r}")
        root = mmu.root.hpa
        if root is None:
            problems.append(f"vCPU {vcpu.vcpu_id} has no current root after its VM entry")
            continue
        if root.role != mmu.root_role:
            problems.append(f"vCPU {vcpu.vcpu_id}: current root {root.id} was built for another role")
        pgd = vcpu.vmcs12.ept_pointer if mmu is vcpu.guest_mmu else vcpu.cr3
        if not mmu.root_role.direct and mmu.root.pgd != pgd:
            problems.append(f"vCPU {vcpu.vcpu_id}: current root {root.id} shadows {mmu.root.pgd:#x}, "
                            f"but the {'EPTP' if mmu is vcpu.guest_mmu else 'CR3'} is {pgd:#x}")
        if vcpu.kvm.nested and (mmu is vcpu.guest_mmu) != vcpu.guest_mode:
            problems.append(f"vCPU {vcpu.vcpu_id} runs {'L2' if vcpu.guest_mode else 'L1'} "
                            f"on {mmu.name}")
    return problems


def state_snapshot(kvm) -> tuple:
    """Everything a faulting event must leave alone, as a comparable value."""
    vcpus = []
    for v in kvm.vcpus:
        slots = tuple((label, info.pgd, getattr(info.hpa, "id", None))
                      for mmu in (v.root_mmu, v.guest_mmu) for label, info in mmu.slots())
        vmcs12 = (v.vmcs12.ept_pointer, v.vmcs12.virtual_processor_id) if v.vmcs12 else None
        vcpus.append((v.cr0, v.cr3, v.cr4, v.efer, v.smm, slots, v.smi_pending, v.init_latched,
                      v.guest_mode, v.mmu.name, vmcs12))
    pages = tuple(sorted((sp.id, sp.root_count, sp.destroyed)
                         for sp in set(kvm.mmu_page_hash.values()) | set(kvm.tdp_mmu_roots)))
    return tuple(vcpus), pages
