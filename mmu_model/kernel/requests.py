"""vCPU requests: work that KVM defers to the next VM entry.

Mirrors: include/linux/kvm_host.h and arch/x86/include/asm/kvm_host.h:
KVM_REQ_* (names only; the bit numbers do not matter to the model).
"""
from __future__ import annotations

import enum


class KVM_REQ(enum.Enum):
    """The requests the model raises, named as in the kernel."""
    TLB_FLUSH = "KVM_REQ_TLB_FLUSH"
    MMU_RELOAD = "KVM_REQ_MMU_RELOAD"                      # up to v5.17
    MMU_FREE_OBSOLETE_ROOTS = "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS"  # v5.18+
    MMU_SYNC = "KVM_REQ_MMU_SYNC"
    LOAD_MMU_PGD = "KVM_REQ_LOAD_MMU_PGD"
    TLB_FLUSH_CURRENT = "KVM_REQ_TLB_FLUSH_CURRENT"
    TLB_FLUSH_GUEST = "KVM_REQ_TLB_FLUSH_GUEST"
    SMI = "KVM_REQ_SMI"
    EVENT = "KVM_REQ_EVENT"
    MMU_UPDATE_ROOT = "KVM_REQ_MMU_UPDATE_ROOT"            # proposed, never merged

    # Members are singletons: hash them by identity (Enum's own hash is slow).
    __hash__ = object.__hash__


def kvm_make_request(req: KVM_REQ, vcpu) -> None:
    """Set a request bit for ``vcpu``; it is serviced by vcpu_enter_guest().

    Mirrors: include/linux/kvm_host.h: kvm_make_request()
    """
    skip = vcpu.kvm.era.suppress_request
    if skip is not None and req.value == skip[1]:
        stack = vcpu.kvm.ablation_stack
        if stack and stack[-1] == (skip[0], True):
            return                  # ablated: this function does not raise it here
    vcpu.requests[req] = None
    vcpu.kvm.step.raised(req)


def kvm_check_request(req: KVM_REQ, vcpu) -> bool:
    """Test and clear a request bit.

    Mirrors: include/linux/kvm_host.h: kvm_check_request()
    """
    if req in vcpu.requests:
        del vcpu.requests[req]
        return True
    return False


def kvm_clear_request(req: KVM_REQ, vcpu) -> None:
    """Clear a request bit without servicing it.

    Mirrors: include/linux/kvm_host.h: kvm_clear_request()
    """
    vcpu.requests.pop(req, None)
