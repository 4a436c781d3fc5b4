"""Step outcomes and totals in the contract's JSON shape (contract 1).

Extensions beyond the contract's listed fields, all additive: ``reason``
(why a fault or no exit), ``call_depth`` (parallel to ``calls``, for
function-graph rendering), ``registers`` (after the step), ``root.kind`` and
``root.entries`` (the four pages of a special root), ``counts`` (per-step resets,
roots allocated, cache and hash hits),
``totals.hash_hits``.

An :class:`Outcomes` builds the outcomes of one simulation.  The parts that
rarely change from one step to the next (a root slot, the registers) are
built once and the same dict is handed out again while they stay the same,
so outcomes may share sub-dicts: treat them as read-only.
"""
from __future__ import annotations

from ..kernel.kvm import KvmPaeRoot
from ..kernel.roles import role_as_dict

_CACHE_MAX = 4096           # distinct slots / register sets remembered before starting afresh


def root_json(info) -> dict | None:
    hpa = info.hpa
    if hpa is None:
        return None
    out = {"id": hpa.id, "pgd": hex(info.pgd), "kind": hpa.kind}
    if isinstance(hpa, KvmPaeRoot):
        out["entries"] = [e.id if e is not None else None for e in hpa.entries]
    return out


def current_root_json(vcpu, era) -> dict | None:
    out = root_json(vcpu.mmu.root)
    if out is not None:
        out["role"] = role_as_dict(vcpu.mmu.root.hpa.role, era.page_role_fields)
    return out


class Outcomes:
    """Builds step outcomes for one VM, reusing the JSON of unchanged parts."""
    __slots__ = ("era", "nested", "_current", "_prev", "_regs")

    def __init__(self, kvm):
        self.era = kvm.era
        self.nested = kvm.nested
        self._current: dict = {}        # root info -> its JSON with the role
        self._prev: dict = {}           # tuple of prev_roots -> their JSON list
        self._regs: dict = {}           # (cr0, cr3, cr4, efer, smm) -> registers JSON

    def current(self, info):
        out = self._current.get(info)
        if out is None:
            if len(self._current) > _CACHE_MAX:
                self._current.clear()
            out = root_json(info)
            if out is not None:
                out["role"] = role_as_dict(info.hpa.role, self.era.page_role_fields)
            self._current[info] = out
        return out

    def prev(self, prev_roots):
        key = tuple(prev_roots)
        out = self._prev.get(key)
        if out is None:
            if len(self._prev) > _CACHE_MAX:
                self._prev.clear()
            out = self._prev[key] = [root_json(r) for r in key]
        return out

    def registers(self, vcpu):
        key = (vcpu.cr0, vcpu.cr3, vcpu.cr4, vcpu.efer, vcpu.smm)
        out = self._regs.get(key)
        if out is None:
            if len(self._regs) > _CACHE_MAX:
                self._regs.clear()
            out = self._regs[key] = {"cr0": hex(key[0]), "cr3": hex(key[1]), "cr4": hex(key[2]),
                                     "efer": hex(key[3]), "smm": key[4]}
        return out

    def step(self, index, vcpu, op, fault, reason, intercepted, names, depths, log) -> dict:
        """The outcome of a step that reached KVM (or went through the slow path)."""
        mmu = vcpu.mmu
        out = {
            "index": index, "vcpu": vcpu.vcpu_id, "op": op,
            "fault": fault, "reason": reason,
            "intercepted": intercepted,
            "calls": names,
            "call_depth": depths,
            "requests": [r.value for r in log.requests],
            "freed": [{"id": f["id"], "slot": f["slot"], "pgd": hex(f["pgd"])} for f in log.freed],
            "destroyed": list(log.destroyed),
            "root_source": log.root_source,
            "root": self.current(mmu.root),
            "prev_roots": self.prev(mmu.prev_roots),
            "tlb_flushes": list(log.flushes),
            "registers": self.registers(vcpu),
            "counts": {"resets": log.resets, "allocated": log.allocated,
                       "cache_hits": log.cache_hits, "hash_hits": log.hash_hits,
                       "tdp_reuses": log.tdp_reuses},
        }
        if self.nested:
            out["nested"] = nested_json(vcpu)
        return out

    def quiet(self, index, vcpu, op, reason) -> dict:
        """The outcome of a guest action the CPU ran without a VM exit: only
        the registers changed (the same fields as :meth:`step` gives it)."""
        mmu = vcpu.mmu
        out = {
            "index": index, "vcpu": vcpu.vcpu_id, "op": op,
            "fault": None, "reason": reason, "intercepted": False,
            "calls": [], "call_depth": [], "requests": [], "freed": [], "destroyed": [],
            "root_source": "same",
            "root": self.current(mmu.root),
            "prev_roots": self.prev(mmu.prev_roots),
            "tlb_flushes": [],
            "registers": self.registers(vcpu),
            "counts": {"resets": 0, "allocated": 0, "cache_hits": 0, "hash_hits": 0,
                       "tdp_reuses": 0},
        }
        if self.nested:
            out["nested"] = nested_json(vcpu)
        return out


def step_outcome(index, vcpu, op, fault, reason, intercepted, calls, log) -> dict:
    """One step's outcome from its StepLog and (depth, name) calls, built
    from scratch (:class:`Outcomes` builds the same, faster)."""
    return Outcomes(vcpu.kvm).step(index, vcpu, op, fault, reason, intercepted,
                                   [name for _d, name in calls], [d for d, _name in calls], log)


def nested_json(vcpu) -> dict:
    """nested-tdp only: which level runs, and both root-holding contexts."""
    v = vcpu.vmcs12
    return {
        "level": "L2" if vcpu.guest_mode else "L1",
        "mmu": vcpu.mmu.name,
        "eptp": hex(v.ept_pointer), "vpid12": v.virtual_processor_id,
        "root_mmu": {"root": root_json(vcpu.root_mmu.root),
                     "prev_roots": [root_json(r) for r in vcpu.root_mmu.prev_roots]},
        "guest_mmu": {"root": root_json(vcpu.guest_mmu.root),
                      "prev_roots": [root_json(r) for r in vcpu.guest_mmu.prev_roots]},
    }


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
