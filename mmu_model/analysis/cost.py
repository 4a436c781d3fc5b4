"""A cost model: turns a run's counts into an estimate of CPU cycles.

The constants are stated here with where each comes from.  They were fitted
to one published measurement - kvm-unit-tests ``vmexit.flat`` as reported in
the changelog of v1 12/12 (cycles per CR0.WP toggle, one vCPU, VMX) - and are
then checked, unchanged, against a second one: the ``ssdd`` timings in the
CR0.WP series of 2023 (tests/test_cost.py).  They estimate; they do not
predict.

vmexit.flat, 12/12 changelog <20220209170020.1775368-13-pbonzini@redhat.com>:

    mode        before (v5.17)   after (v1 12/12)
    TDP MMU        46754            4879
    legacy TDP      5096            4875
    shadow          5150            5006

Per toggle the model counts, before: one exit, one reset, one current-root
flush and a new root (TDP MMU) or a hash hit (legacy, shadow); after: one
exit, one reset and a cache hit.  Hence:

* ``exit`` 4,700: what every "after" figure shares - the VM exit, decoding
  and emulating MOV CR0, and the re-entry - less a reset and a cache hit.
* ``reset`` 125 (+100 under shadow paging, which also rebuilds permission
  and reserved-bit masks: shadow exceeds legacy by about 55-130 cycles).
* ``cache_hit`` 50: a prev_roots rotation plus KVM_REQ_LOAD_MMU_PGD.
* ``hash_hit`` 150 and ``flush`` 100: legacy before (5,096) minus after (4,875)
  is about 220 cycles for a hash lookup plus a single-context INVEPT.
* ``new_root`` 41,800: TDP before minus the rest - building an empty root and
  taking the EPT violations to refault vmexit.flat's (small) working set.
  Larger guests pay more; the constant is vmexit.flat's.
* ``tdp_root_get`` 600: finding a live TDP MMU root again takes mmu_lock for
  write before v6.9 and an atomic on a shared refcount; not in vmexit.flat
  (one vCPU), an estimate.
"""
from __future__ import annotations

CONSTANTS = {
    "exit": 4_700,
    "reset": 125,
    "shadow_reset_extra": 100,
    "cache_hit": 50,
    "hash_hit": 150,
    "tdp_root_get": 600,
    "new_root": 41_800,
    "flush": 100,
    "flush_gva": 30,
}


def step_cost(step: dict, mode: str, c: dict = CONSTANTS) -> int:
    """Estimated cycles for one step outcome (see the module docstring)."""
    n = step["counts"]
    cycles = c["exit"] if step["intercepted"] else 0
    cycles += n["resets"] * (c["reset"] + (c["shadow_reset_extra"] if mode == "shadow" else 0))
    cycles += n["cache_hits"] * c["cache_hit"]
    cycles += n["hash_hits"] * c["hash_hit"]
    cycles += n.get("tdp_reuses", 0) * c["tdp_root_get"]
    cycles += n["allocated"] * c["new_root"]
    for kind in step["tlb_flushes"]:
        cycles += c["flush_gva"] if kind == "gva" else c["flush"]
    return cycles


def run_cost(doc: dict, c: dict = CONSTANTS) -> int:
    """Estimated cycles for a whole run (an outcome document)."""
    return sum(step_cost(s, doc["mode"], c) for s in doc["steps"])
