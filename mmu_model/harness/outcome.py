"""Step outcomes and totals in the contract's JSON shape (contract 1).

Extensions beyond the contract's listed fields, all additive: ``reason``
(why a fault or no exit), ``call_depth`` (parallel to ``calls``, for
function-graph rendering), ``registers`` (after the step), ``root.kind`` and
``root.entries`` (the four pages of a special root), ``counts`` (per-step resets,
roots allocated, cache and hash hits),
``totals.hash_hits``.
"""
from __future__ import annotations

from ..kernel.kvm import KvmPaeRoot


def root_json(info) -> dict | None:
    hpa = info.hpa
    if hpa is None:
        return None
    out = {"id": hpa.id, "pgd": hex(info.pgd), "kind": hpa.kind}
    if isinstance(hpa, KvmPaeRoot):
        out["entries"] = [e.id if e is not None else None for e in hpa.entries]
    return out


def current_root_json(vcpu, era) -> dict | None:
    from ..kernel.roles import role_as_dict
    out = root_json(vcpu.mmu.root)
    if out is not None:
        out["role"] = role_as_dict(vcpu.mmu.root.hpa.role, era.page_role_fields)
    return out


def step_outcome(index, vcpu, op, fault, reason, intercepted, calls, log) -> dict:
    era = vcpu.kvm.era
    mmu = vcpu.mmu
    return {
        "index": index, "vcpu": vcpu.vcpu_id, "op": op,
        "fault": fault, "reason": reason,
        "intercepted": intercepted,
        "calls": [name for _d, name in calls],
        "call_depth": [d for d, _name in calls],
        "requests": [r.value for r in log.requests],
        "freed": [{"id": f["id"], "slot": f["slot"], "pgd": hex(f["pgd"])} for f in log.freed],
        "destroyed": list(log.destroyed),
        "root_source": log.root_source,
        "root": current_root_json(vcpu, era),
        "prev_roots": [root_json(r) for r in mmu.prev_roots],
        "tlb_flushes": list(log.flushes),
        "registers": {"cr0": hex(vcpu.cr0), "cr3": hex(vcpu.cr3), "cr4": hex(vcpu.cr4),
                      "efer": hex(vcpu.efer), "smm": vcpu.smm},
        "counts": {"resets": log.resets, "allocated": log.allocated,
                    "cache_hits": log.cache_hits, "hash_hits": log.hash_hits,
                    "tdp_reuses": log.tdp_reuses},
    } | (nested_json(vcpu) if vcpu.kvm.nested else {})


def nested_json(vcpu) -> dict:
    """nested-tdp only: which level runs, and both root-holding contexts."""
    v = vcpu.vmcs12
    return {"nested": {
        "level": "L2" if vcpu.guest_mode else "L1",
        "mmu": vcpu.mmu.name,
        "eptp": hex(v.ept_pointer), "vpid12": v.virtual_processor_id,
        "root_mmu": {"root": root_json(vcpu.root_mmu.root),
                     "prev_roots": [root_json(r) for r in vcpu.root_mmu.prev_roots]},
        "guest_mmu": {"root": root_json(vcpu.guest_mmu.root),
                      "prev_roots": [root_json(r) for r in vcpu.guest_mmu.prev_roots]},
    }}


def empty_totals() -> dict:
    return {"exits": 0, "resets": 0, "roots_allocated": 0, "roots_freed": 0,
            "roots_destroyed": 0, "cache_hits": 0, "hash_hits": 0, "tdp_reuses": 0,
            "tlb_flushes": 0}


def add_to_totals(t: dict, log, intercepted: bool) -> None:
    """Add one step's counts (from its StepLog) to running totals: exits, resets,
    roots allocated/freed/destroyed, cache and hash hits, hardware TLB flushes."""
    t["exits"] += intercepted
    t["resets"] += log.resets
    t["roots_allocated"] += log.allocated
    t["roots_freed"] += len(log.freed)
    t["roots_destroyed"] += len(log.destroyed)
    t["cache_hits"] += log.cache_hits
    t["hash_hits"] += log.hash_hits
    t["tdp_reuses"] += log.tdp_reuses
    t["tlb_flushes"] += len(log.flushes)
