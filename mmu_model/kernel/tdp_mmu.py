"""The TDP MMU's shared, refcounted roots.

Mirrors: arch/x86/kvm/mmu/tdp_mmu.c.  Roots live on ``kvm.tdp_mmu_roots``,
one list for both address spaces (the role's ``smm`` byte tells them apart),
and are shared by every vCPU slot whose root role is identical.
"""
from __future__ import annotations

from .kvm import KvmMmuPage


def kvm_tdp_mmu_alloc_root(vcpu) -> KvmMmuPage:
    """Take a reference to the valid root with the MMU's root role, or make one.

    A found root is ``shared`` when some vCPU slot holds it, ``preserved``
    when only the TDP MMU's own reference (v6.4+) kept it alive.  A new root
    starts with one reference for the vCPU, plus one for the TDP MMU itself
    from v6.4 (edbdb43fc96b).
    Mirrors: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_alloc_root() (v6.9+;
    kvm_tdp_mmu_get_vcpu_root_hpa() before)
    """
    kvm = vcpu.kvm
    role = vcpu.mmu.root_role
    for root in kvm.tdp_mmu_roots:
        if root.role == role and not root.role.invalid and root.root_count > 0:
            only_tdp_mmu = root.tdp_mmu_ref and root.root_count == 1
            root.root_count += 1
            kvm.step.root_source = "preserved" if only_tdp_mmu else "shared"
            kvm.step.tdp_reuses += 1
            return root
    root = KvmMmuPage(kvm.alloc_id(), 0, role, tdp_mmu_page=True)
    root.root_count = 1
    if kvm.era.tdp_mmu_owns_roots:
        root.tdp_mmu_ref = True
        root.root_count += 1
    kvm.tdp_mmu_roots.append(root)
    kvm.step.allocated += 1
    kvm.step.root_source = "new"
    return root


def kvm_tdp_mmu_put_root(kvm, root):
    """Drop a reference; the last one removes the root and zaps its whole tree.

    Before v6.4 the last vCPU reference is the last reference, so unloading a
    root that no other vCPU holds destroys it.  From v6.4 the TDP MMU keeps a
    reference until the root is invalidated, which this model never does.
    Mirrors: arch/x86/kvm/mmu/tdp_mmu.c: kvm_tdp_mmu_put_root()
    """
    root.root_count -= 1
    if root.root_count:
        return
    kvm.tdp_mmu_roots.remove(root)
    root.destroyed = True
    kvm.step.destroyed.append(root.id)
