"""Ablation: remove one root unload or flush request at a time and search.

Each :class:`Decision` names a place where an era's CR0/CR4/CR3/EFER/SMM
paths unload roots or request a flush: the kernel function, the condition,
and the action.  ``ablated(era, decision)`` is a variant in which that one
action is skipped when the function runs under that condition (and only
when the function does it itself, not its callees).  ``ablation_table`` runs
the violation search on each variant and reports which decisions are needed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..harness.scenario import ScenarioError, show
from ..kernel.registers import (
    EFER_LME,
    EFER_NX,
    X86_CR0_PG,
    X86_CR0_WP,
    X86_CR4_PAE,
    X86_CR4_PCIDE,
    X86_CR4_PGE,
    X86_CR4_SMEP,
)


@dataclass(frozen=True)
class Decision:
    id: str
    function: str                   # the core name of the mirrored function
    condition: str                  # in words
    action: str                     # a KVM_REQ_* name, or kvm_mmu_unload / kvm_mmu_free_roots /
    #                                 "unload in kvm_mmu_reset_context"
    applies: Callable               # (args of the function) -> bool
    why: str = ""                   # why it is needed, for a reviewer
    modes: tuple = ()               # the modes where it can matter (empty: all)

    @property
    def label(self) -> str:
        return f"{self.function}(): {self.condition} -> {self.action}"


def _cr(bit, old_to, new_to):
    return lambda vcpu, old, new: bool(old & bit) == old_to and bool(new & bit) == new_to


def _changed(mask):
    return lambda vcpu, old, new: bool((old ^ new) & mask)


RESET_UNLOAD = "unload in kvm_mmu_reset_context"
ALWAYS = (lambda *a: True)

V6_DECISIONS = (
    Decision("cr0-pg-off-flush", "kvm_post_set_cr0", "CR0.PG 1->0", "KVM_REQ_TLB_FLUSH_GUEST",
             _cr(X86_CR0_PG, True, False),
             "Clearing CR0.PG invalidates every TLB entry, global ones included; without the "
             "flush the hardware TLB keeps translations the guest may no longer use."),
    Decision("cr0-role-reset", "kvm_post_set_cr0", "CR0.PG or CR0.WP changed", RESET_UNLOAD,
             _changed(X86_CR0_PG | X86_CR0_WP),
             "Roots built for the old paging mode stay loaded and cached; the reset is what makes "
             "the next entry build or sync a root for the new mode."),
    Decision("cr4-role-reset", "kvm_post_set_cr4", "a CR4 role bit changed", RESET_UNLOAD,
             lambda vcpu, old, new: bool((old ^ new) & vcpu.kvm.era.cr4_role_bits),
             "Roots of the old role stay cached without a sync."),
    Decision("cr4-pcide-on-unload", "kvm_post_set_cr4", "shadow paging, CR4.PCIDE 0->1",
             "kvm_mmu_unload", _cr(X86_CR4_PCIDE, False, True),
             "A root cached while PCIDs were off was last synced under PCID 0 semantics; after "
             "PCIDE is set a no-flush MOV CR3 to its CR3 reuses it unsynced, so the guest sees "
             "an entry that a flushing MOV CR3 with PCIDE=0 had invalidated."),
    Decision("cr4-pge-flush", "kvm_post_set_cr4", "CR4.PGE changed", "KVM_REQ_TLB_FLUSH_GUEST",
             _changed(X86_CR4_PGE),
             "Toggling CR4.PGE invalidates all TLB entries, global ones included."),
    Decision("cr4-pcide-off-flush", "kvm_post_set_cr4", "CR4.PCIDE 1->0", "KVM_REQ_TLB_FLUSH_GUEST",
             _cr(X86_CR4_PCIDE, True, False),
             "Clearing CR4.PCIDE invalidates the entries of every PCID; the hardware TLB and "
             "unsync shadow pages would otherwise keep them."),
    Decision("cr4-pae-flush", "kvm_post_set_cr4", "CR4.PAE changed", "KVM_REQ_TLB_FLUSH_CURRENT",
             _changed(X86_CR4_PAE),
             "A CR4.PAE change invalidates the current PCID's entries."),
    Decision("cr4-smep-flush", "kvm_post_set_cr4", "CR4.SMEP 0->1", "KVM_REQ_TLB_FLUSH_CURRENT",
             _cr(X86_CR4_SMEP, False, True),
             "Setting CR4.SMEP invalidates the current PCID's entries."),
    Decision("pcid-tdp-flush", "kvm_invalidate_pcid", "TDP", "KVM_REQ_TLB_FLUSH_GUEST",
             lambda vcpu, pcid: vcpu.kvm.tdp_enabled,
             "An emulated flushing MOV CR3 or INVPCID must flush the guest's TLB for the PCID."),
    Decision("pcid-active-sync", "kvm_invalidate_pcid", "the active PCID", "KVM_REQ_MMU_SYNC",
             lambda vcpu, pcid: pcid == vcpu.active_pcid(),
             "A flushing MOV CR3 must bring the unsync shadow pages of the new root up to date."),
    Decision("pcid-active-flush", "kvm_invalidate_pcid", "the active PCID",
             "KVM_REQ_TLB_FLUSH_CURRENT", lambda vcpu, pcid: pcid == vcpu.active_pcid(),
             "A flushing MOV CR3 must drop the hardware TLB's entries for the PCID."),
    Decision("pcid-free-prev", "kvm_invalidate_pcid", "CR4.PCIDE=1, prev roots with that PCID",
             "kvm_mmu_free_roots", ALWAYS,
             "A cached root of the flushed PCID would be reused unsynced by a later no-flush "
             "MOV CR3 to it, showing entries the flush invalidated."),
    Decision("pdptrs-free", "load_pdptrs", "shadow paging, PDPTEs changed", "kvm_mmu_free_roots",
             ALWAYS, "A PAE root encodes the PDPTEs it was built from."),
    Decision("efer-reset", "set_efer", "EFER.NX or EFER.LME changed", RESET_UNLOAD,
             lambda vcpu, efer, host=False: bool((vcpu.efer ^ efer) & (EFER_NX | EFER_LME)),
             "Roots of the old role stay cached without a sync."),
    Decision("smm-enter-reset", "kvm_smm_changed", "entering SMM", RESET_UNLOAD,
             lambda vcpu, entering: entering,
             "An SMI invalidates the whole TLB; the unload makes the next load flush and sync."),
    Decision("smm-leave-reset", "kvm_smm_changed", "leaving SMM", RESET_UNLOAD,
             lambda vcpu, entering: not entering,
             "RSM invalidates the whole TLB; the unload makes the next load flush and sync."),
    Decision("smm-final-reset", "enter_smm", "after loading the SMM state", RESET_UNLOAD, ALWAYS,
             "The registers changed without the post-write hooks; only this reset sees them."),
    Decision("init-pg-flush", "kvm_vcpu_reset", "INIT with CR0.PG=1", "KVM_REQ_TLB_FLUSH_GUEST",
             lambda vcpu, init_event: bool(vcpu.cr0 & X86_CR0_PG), "INIT flushes the TLB."),
    Decision("init-reset", "kvm_vcpu_reset", "CR0.PG was 1", RESET_UNLOAD,
             lambda vcpu, init_event: bool(vcpu.cr0 & X86_CR0_PG),
             "The vCPU leaves paging; its old roots must not stay loaded."),
) + (
    # nested TDP: L1's side (docs/kernel-notes.md §9)
    Decision("nested-vpid-off-flush", "nested_vmx_transition_tlb_flush", "vmcs12 without VPID",
             "KVM_REQ_TLB_FLUSH_GUEST",
             lambda vcpu, is_vmenter: not vcpu.vmcs12.virtual_processor_id,
             "With VPID off L2 shares L1's VPID 0, whose linear and combined mappings every "
             "VM entry and exit invalidates (SDM 28.3.3.3, kvm-unit-tests vmx_pf_no_vpid_test).",
             modes=("nested-tdp",)),
    Decision("nested-new-vpid-flush", "nested_vmx_transition_tlb_flush",
             "VM-entry with a new vpid12", "KVM_REQ_TLB_FLUSH_GUEST",
             lambda vcpu, is_vmenter: bool(is_vmenter and vcpu.vmcs12.virtual_processor_id
                                           and vcpu.vmcs12.virtual_processor_id != vcpu.last_vpid),
             "KVM keeps one vpid02 for every vpid12; entries cached under the old vpid12 would "
             "show through a new one (kvm-unit-tests vmx_pf_vpid_test).", modes=("nested-tdp",)),
    Decision("invept-free", "handle_invept", "INVEPT single-context or global",
             "kvm_mmu_free_roots", ALWAYS,
             "INVEPT invalidates the EPTP's guest-physical mappings; the freed root is synced "
             "when it is loaded again, otherwise L2 keeps an entry L1 replaced.",
             modes=("nested-tdp",)),
    Decision("invvpid-flush", "handle_invvpid", "any type", "vpid_sync_context", ALWAYS,
             "INVVPID invalidates L2's linear and combined mappings for the VPID.",
             modes=("nested-tdp",)),
)

SEED_V1_DECISIONS = (
    Decision("cr0-pg-off-unload", "kvm_post_set_cr0", "CR0.PG 1->0", "kvm_mmu_unload",
             _cr(X86_CR0_PG, True, False),
             "With paging off every PCID's entries are invalid; cached roots would come back "
             "unsynced on a later no-flush MOV CR3."),
    Decision("cr4-smep-flush", "kvm_post_set_cr4", "a role bit changed and CR4.SMEP 0->1",
             "KVM_REQ_TLB_FLUSH_GUEST", _cr(X86_CR4_SMEP, False, True),
             "Setting CR4.SMEP invalidates the current PCID's entries."),
    Decision("cr4-pcide-reload", "kvm_post_set_cr4", "CR4.PCIDE changed (no role bit)",
             "KVM_REQ_MMU_RELOAD", _changed(X86_CR4_PCIDE),
             "A root cached under the other PCID semantics would be reused unsynced."),
    Decision("cr4-pge-flush", "kvm_post_set_cr4", "CR4.PGE changed (no role bit)",
             "KVM_REQ_TLB_FLUSH_GUEST", _changed(X86_CR4_PGE),
             "Toggling CR4.PGE invalidates all TLB entries, global ones included."),
) + tuple(d for d in V6_DECISIONS if d.function == "kvm_invalidate_pcid") + (
    Decision("init-unload", "kvm_vcpu_reset", "CR0.PG was 1", "kvm_mmu_unload",
             lambda vcpu, init_event: bool(vcpu.cr0 & X86_CR0_PG),
             "The vCPU leaves paging; its old roots must not stay loaded."),
)

DECISIONS = {"v6.18": V6_DECISIONS, "v6.4": V6_DECISIONS, "seed-v1": SEED_V1_DECISIONS}


def ablated(era, decision: Decision):
    """``era`` with ``decision``'s action skipped (a variant for the search)."""
    def wrapper(core_name, fn):
        def call(*args, **kwargs):
            first = args[0] if args else None
            kvm = first if hasattr(first, "vcpus") else getattr(first, "kvm", None)
            if kvm is None:                       # is_root_usable() and other pure helpers
                return fn(*args, **kwargs)
            stack = kvm.ablation_stack
            top = stack[-1] if stack else None
            if top == (decision.function, True):
                if core_name == decision.action:
                    return None                               # skipped
                if decision.action == RESET_UNLOAD and core_name == "kvm_mmu_reset_context":
                    kvm.step.resets += 1
                    stack.append((core_name, False))
                    try:
                        return args[0].ops.kvm_init_mmu(args[0])     # no unload
                    finally:
                        stack.pop()
            active = core_name == decision.function and bool(decision.applies(*args, **kwargs))
            stack.append((core_name, active))
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
        return call
    name = f"{era.name}~no-{decision.id}"
    variant = era.derive(name, f"{era.name} without {decision.label}")
    return replace(variant, op_wrapper=wrapper,
                   suppress_request=(decision.function, decision.action))


ABLATION_MODES = ("shadow", "tdp", "tdp-legacy", "nested-tdp")
# The most programs per row (`ablate --examples`): what the golden ablation
# tables use (tests/golden.py).  v6.18's table, every mode: 1,000 took 2.7
# minutes on an idle machine here, 2,000 took 16.6 on a busy one (README).
MAX_EXAMPLES = 2_000


_TABLE = None           # (era, vendor, examples, [(decision, mode)]), set before the fork


def _row(i: int) -> dict:
    """Row ``i`` of the table: search the era without its decision, in its mode."""
    from .search import find_violation
    era_obj, vendor, examples, tasks = _TABLE
    d, mode = tasks[i]
    found, n = find_violation(ablated(era_obj, d), mode, vendor, examples=examples,
                              baseline=era_obj)
    return {"decision": d.id, "label": d.label, "mode": mode,
            "violation": found is not None, "programs": n,
            "reproduction": found[1] if found else None,
            "why": d.why if found else ""}


def ablation_table(era, modes=ABLATION_MODES, vendor="vmx", examples=300,
                   decisions=None, jobs=1, progress=None) -> list[dict]:
    """One row per (decision, mode): whether the search finds a violation.
    Each row is its own seeded search, so ``jobs`` processes give the same rows."""
    global _TABLE
    from ..harness.sim import era_argument
    from .search import check_search, ordered_map
    era_obj = era_argument(era)
    if isinstance(modes, str) or not modes:
        raise ScenarioError("modes", f"expected a list of modes, got {show(modes, True)}")
    for mode in modes:
        check_search(mode, vendor, examples, MAX_EXAMPLES)
    tasks = [(d, mode) for d in decisions or DECISIONS.get(era_obj.name, V6_DECISIONS)
             for mode in modes if not d.modes or mode in d.modes]
    _TABLE = (era_obj, vendor, examples, tasks)
    return ordered_map(_row, range(len(tasks)), jobs, progress)


def _short(ev) -> str:
    op = ev["op"]
    rest = " ".join(f"{k}={v if not isinstance(v, list) else '+'.join(v)}"
                    for k, v in ev.items() if k != "op")
    return f"{op} {rest}".strip()


def ablation_text(era_name, rows) -> str:
    lines = [f"ablation of {era_name}: each row removes one action and searches for a violation",
             ""]
    for r in rows:
        verdict = "NEEDED" if r["violation"] else f"no violation in {r['programs']} programs"
        lines.append(f"[{r['mode']:<10}] {r['label']}: {verdict}")
        if r["violation"]:
            lines.append("    reproduction: " + "; ".join(_short(e) for e in r["reproduction"]))
            lines.append("    why: " + r["why"])
    return "\n".join(lines)


def _no_pcide_unload():
    from ..eras.v6_18 import V6_18
    d = next(d for d in V6_DECISIONS if d.id == "cr4-pcide-on-unload")
    return replace(ablated(V6_18, d), name="v6.18~no-pcide-unload",
                   summary="v6.18 without kvm_mmu_unload() on CR4.PCIDE 0->1 (shadow paging)",
                   kernel="variant", sources=("f6d0a2521ce1 (the unload it removes)",),
                   inferred="a variant for the checker: not a kernel")


NO_PCIDE_UNLOAD = _no_pcide_unload()
