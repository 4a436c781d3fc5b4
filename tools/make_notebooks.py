"""Write the notebooks from the cell lists below (outputs empty).

The notebooks are committed without outputs; this script is how they are
authored, so that their text stays reviewable as Python.  Run:

    .venv/bin/python tools/make_notebooks.py
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


INDEX = [
    md("""
# KVM MMU Root Lab

**The question:** when a guest writes a control register, which of its MMU roots does
KVM free, which does it reuse, and which TLB flushes does it ask for?

This notebook set answers it with a model of the kernel's own functions, era by era
(what Linux v5.17 did, what v6.18 does), under **shadow paging** and under **TDP**
(EPT on Intel, NPT on AMD).

### Vocabulary

* **gva / gpa / hpa** – guest-virtual, guest-physical, host-physical address.
* **pgd** – the guest's top-level page table, i.e. its CR3 value.
* **root** – the top page of the page table KVM loads into hardware for the guest.
* **shadow page** – a page KVM builds to mirror one of the guest's own page tables
  (shadow paging), found again through a VM-wide hash keyed by (gfn, role).
* **TDP** – two-dimensional paging: hardware walks the guest's tables, then KVM's
  gpa→hpa tables. A TDP root does not depend on the guest's CR3.
* **role** – the bits of paging mode a root was built for; a root is reused only
  for an identical role.
* **`prev_roots`** – a per-vCPU cache of the three most recently used roots.
"""),
    md("""
## How to run it

`./run lab` sets up `.venv` and opens these notebooks in JupyterLab; `./run test`
runs every test, including executing each notebook from a clean kernel. Run a
notebook top to bottom (*Run → Run All Cells*); every widget responds to clicks.
Reading order:

0. this index — one scenario, end to end.
1. [01-two-ways](01-two-ways.ipynb) — two ways to virtualize paging: shadow pages and TDP; what a root is.
2. [02-mmu-role](02-mmu-role.ipynb) — which register bits are in the MMU role, and why.
3. [03-root-cache](03-root-cache.ipynb) — CR3, PCIDs, the no-flush bit and the `prev_roots` LRU order.
4. [04-lab](04-lab.ipynb) — the lab: shadow paging and TDP side by side, driven by one set of controls.
5. [05-other-flows](05-other-flows.ipynb) — SMM, `KVM_SET_SREGS` and INIT.
6. [06-at-scale](06-at-scale.ipynb) — the history presets and random workloads as charts.

The model lives in the `mmu_model` package; the notebooks only call it. For
homework, `python -m mmu_model quiz -s SEED` prints seeded questions and `-c` their answers.
"""),
    md("""
## One scenario, end to end

A 64-bit guest turns CR0.WP off and on again — grsecurity's kernel does this
constantly to write to read-only kernel data. First under v5.17 with TDP:
"""),
    code("""
from mmu_model import Simulation, all_eras
from mmu_model.render import step_graph

sim = Simulation("v5.17", mode="tdp", vendor="vmx", start="long-mode")
off = sim.apply({"op": "mov_cr0", "clear": ["WP"]})
on = sim.apply({"op": "mov_cr0", "set": ["WP"]})
[(s["root"]["id"], s["root_source"], s["destroyed"]) for s in (off, on)]
"""),
    md("""
Each toggle throws the TDP root away (`destroyed`) and builds a new, empty one:
in v5.17 the TDP root's role still carried the guest's CR0.WP. Here is what the
kernel ran for the first toggle, in ftrace's `function_graph` form:
"""),
    code("""
print(step_graph(off))
"""),
    md("""
`kvm_post_set_cr0()` saw a role bit change and called `kvm_mmu_reset_context()`,
which unloaded every root; `kvm_tdp_mmu_put_root()` dropped the last reference and
the tree was gone. At the next VM entry `kvm_mmu_reload()` found no root and
`kvm_mmu_load()` built one.

Now the same guest under v6.18:
"""),
    code("""
sim = Simulation("v6.18", mode="tdp", vendor="vmx", start="long-mode")
off = sim.apply({"op": "mov_cr0", "clear": ["WP"]})
off["intercepted"], off["reason"], off["root_source"]
"""),
    md("""
Nothing happened in KVM at all: since v6.4, with EPT, VMX lets the guest own
CR0.WP, so the write does not even exit.

## The eras in this version
"""),
    code("""
for era in all_eras():
    print(f"{era.name:7} {era.kernel:15} {era.summary}")
"""),
    md("""
## Summary

* A root is reused only for the same role; v5.17 put guest CR0.WP in the TDP root's
  role, so every toggle rebuilt the TDP tables.
* v6.18 neither resets nor (on VMX with EPT) exits for a CR0.WP-only write.

## Exercises

1. Run the same two steps with `mode="shadow"`. Which root comes back when WP is set
   again, and from where?
2. Try `vendor="svm"` under v6.18. Does the write exit? What does KVM run?

## Checks
"""),
    code("""
assert [s["root_source"] for s in Simulation("v5.17", "tdp", start="long-mode").run(
    [{"op": "mov_cr0", "clear": 0x10000}, {"op": "mov_cr0", "set": 0x10000}])] == ["new", "new"]
assert off["intercepted"] is False and off["root"]["id"] == 1
"""),
]


VOCAB = """
### Vocabulary

* **gva / gpa / hpa** – guest-virtual, guest-physical, host-physical address.
* **pgd** – the guest's top-level page table, i.e. its CR3 value.
* **root** – the top page of the page table KVM loads into hardware for the guest.
* **shadow page** – a page KVM builds to mirror one of the guest's page tables.
* **TDP** – two-dimensional paging (EPT, NPT): hardware walks the guest's tables, then KVM's.
* **role** – the paging-mode bits a root was built for; a root is reused only for the same role.
"""

TWO_WAYS = [
    md("""
# 01 · Two ways to virtualize paging

**The question:** a guest believes it owns the MMU. What does KVM give the hardware
instead, and what is a "root" in each case?
""" + VOCAB),
    md("""
## Shadow paging: KVM builds the tables the hardware walks

Under shadow paging the hardware walks tables KVM built from the guest's own
(gva → hpa in one go). The root is a shadow page of the guest's top-level table,
so it is tied to the guest's CR3. A LabState runs the same events under shadow
paging and under TDP:
"""),
    code("""
from mmu_model.widgets import LabState, panes
state = LabState("v6.18", "vmx", vcpus=1, start="long-mode-pcid")
panes(state)
"""),
    md("""
Before any step, each side holds one root. On the left it is a `shadow` page
with `pgd 0x1000`, the guest's CR3. On the right it is a `tdp_mmu` root with
`pgd 0x0`: TDP roots do not depend on CR3.

## Switching address spaces

The guest's scheduler switches to another process: MOV CR3 to 0x2001, which is PCID 1.
"""),
    code("""
step = state.apply({"op": "mov_cr3", "value": "0x2001"})
panes(state)
"""),
    md("""
Shadow paging had to build a root for the new address space (`NEW`), and the old
root moved to `prev0`, the cache. Under TDP the write did not even leave the guest:
with EPT, MOV CR3 is not intercepted.

## What ran in the kernel
"""),
    code("""
from mmu_model.render import step_graph
print(step_graph(step["shadow"]))
"""),
    md("""
`kvm_set_cr3()` asked `kvm_mmu_new_pgd()` for a usable root. None was cached, so the
root was left invalid and `kvm_mmu_load()` built one at the next VM entry.

## Summary

* A **root** is the top of the page table the hardware walks for the guest.
* Shadow roots belong to one guest CR3 (and one role); TDP roots belong to one role only.
* So a CR3 switch is KVM's business under shadow paging, and not at all under TDP.

## Exercises

1. Switch back to `0x1000`. Where does the shadow root come from now?
2. Make `state` with `vendor="svm"`. Does MOV CR3 exit under NPT?

## Checks
"""),
    code("""
assert step["shadow"]["root_source"] == "new" and step["shadow"]["prev_roots"][0]["id"] == 1
assert step["tdp"]["intercepted"] is False and step["tdp"]["root"]["pgd"] == "0x0"
"""),
]

ROLE = [
    md("""
# 02 · The MMU role

**The question:** which register bits decide which root KVM may use, and why are
some bits in the role and others not?
""" + VOCAB + """
* **CPU role** (`cpu_role`, `mmu_role` before v5.19) – the guest's paging mode as KVM sees it.
* **root role** (`root_role`) – the role of the roots KVM builds: for shadow paging
  it follows the CPU role; for TDP it barely depends on the guest.
"""),
    md("""
## The role bits of an era

A bit is in the role when the tables KVM builds must differ with it: CR0.WP changes
what a supervisor write may do, so a shadow page built for WP=1 is wrong for WP=0.
Hover over a button to read what the bit does, whether it is a role bit in this era,
and what the SDM says a change invalidates. Role bits are drawn highlighted.
"""),
    code("""
from mmu_model.widgets import role_explorer
roles = role_explorer(era="v6.18", start="long-mode")
roles
"""),
    md("""
The table lists every field of the role, for shadow paging and for TDP. Now clear
CR0.WP, from code, as a click would:
"""),
    code("""
roles.parts.bits["WP"].value = False
roles.parts.roles
"""),
    md("""
`cr0_wp` changed in the CPU role and in the shadow root role, but the TDP root role
still says `cr0_wp = 1`: since v5.19 KVM fixes it there, because the hardware walks the
guest's tables itself and applies the guest's WP.

## Before v5.19
"""),
    code("""
roles.parts.era.value = "v5.17"
roles.parts.roles
"""),
    md("""
In v5.17 the TDP root role also carried the guest's CR0.WP, so every toggle needed a
different TDP root. The table below shows it per era for the current registers.
"""),
    code("""
roles.parts.eras
"""),
    md("""
## Summary

* Role bits: CR0 `PG WP`; CR4 `PSE PAE LA57 SMEP SMAP PKE` (and `PGE` until v5.15); EFER `NX`
  (and `LME` from v5.18).
* Shadow roots follow the guest's role; TDP roots keep only SMM and guest mode from v5.19.

## Exercises

1. Set CR4.SMEP with CR0.WP clear. Which derived field appears, and why does it exist?
2. Which era first treats CR4.PGE as *not* a role bit? Hover over PGE in `v5.15`.

## Checks
"""),
    code("""
import re
assert "cr0_wp" in re.findall(r'data-field="(\\w+)" data-changed="1"', roles.parts.roles.value)
assert "v5.17" in roles.parts.eras.value and roles.parts.state.registers()["cr0"] & 0x10000 == 0
"""),
]

CACHE = [
    md("""
# 03 · The root cache: CR3, PCIDs and LRU order

**The question:** when a shadow-paged guest switches address spaces, when does KVM
find the old root again, and which one does it forget?
""" + VOCAB + """
* **`prev_roots`** – three cached roots per vCPU, most recently used first.
* **PCID** – CR3 bits 11:0 with CR4.PCIDE=1: the hardware tags TLB entries with it.
* **no-flush** – CR3 bit 63: "keep this PCID's TLB entries"; KVM may then keep its roots too.
"""),
    md("""
## The cache widget

One button per address space; the diagram shows the current root, then `prev_roots`
from most to least recently used. The kernel's own picture of the rotation is
`C 0 1 2 → 0 C 1 2 → 1 C 0 2 → 2 C 0 1`.
"""),
    code("""
from mmu_model.widgets import root_cache
cache = root_cache(era="v6.18", mode="shadow")
cache
"""),
    md("""
## Filling the cache
"""),
    code("""
for v in (0x2001, 0x3002, 0x4003):
    cache.parts.cr3[v].click()
cache.parts.cache
"""),
    md("""
Each switch built a new root and pushed the old one into `prev0`; the first root
(`#1`) is now the least recently used, in `prev2`.

## A hit
"""),
    code("""
cache.parts.cr3[0x2001].click()
cache.parts.cache
"""),
    md("""
`#2` came back from the cache (`REUSED`) and the slots rotated: nothing was built.

## A miss evicts the LRU root
"""),
    code("""
cache.parts.cr3[0x5004].click()
cache.parts.cache
"""),
    md("""
With four roots known and three slots, the new address space cost the least
recently used root its place: it is `FREED` (its shadow page stays in the hash).

## The no-flush bit

Without bit 63, a MOV CR3 asks KVM to flush that PCID, and KVM frees every cached
root with that PCID. Tick *no-flush* to keep them.
"""),
    code("""
cache.parts.noflush.value = True
cache.parts.cr3[0x3002].click()
cache.parts.cache
"""),
    md("""
## Summary

* `prev_roots` is a three-entry LRU: a hit rotates, a miss evicts the rightmost.
* A flushing MOV CR3 costs the cached roots of that PCID; the no-flush bit keeps them.

## Exercises

1. Turn CR4.PCIDE off with the button. What happens to the cache in v6.18?
   In v5.17 (`root_cache(era="v5.17")`)?
2. Predict the slots after CR3=0x1000 now, then click.

## Checks
"""),
    code("""
sim = cache.parts.state.sims["shadow"]
assert [s["root_source"] for s in sim.outcomes] == ["new", "new", "new", "cache", "new", "cache"]
assert sim.outcomes[4]["freed"][0]["slot"] == "prev2"
"""),
]

LAB = [
    md("""
# 04 · The lab: shadow paging and TDP side by side

**The question:** for any guest action, which roots does KVM free, which does it
reuse, and which flushes does it ask for — under shadow paging and under TDP, era by era?
""" + VOCAB + """
* **freed** – a root dropped from a slot; **destroyed** – a TDP MMU root that lost its last
  reference, and its whole tree with it.
* **reused** – found again: in `prev_roots` (cache), in the shadow-page hash, shared with
  another vCPU, or kept alive by the TDP MMU's own reference (v6.4+).
"""),
    md("""
## The lab

Toggle a bit, pick a CR3, press a button: the same action goes to both panes. Each pane
shows the acting vCPU's current root and `prev_roots`, the VM-wide roots with their
reference counts, the requests, the TLB flushes, the kernel calls and running totals.
Undo replays everything but the last step.
"""),
    code("""
from mmu_model.widgets import lab
w = lab(era="v6.18", vendor="vmx", vcpus=1, start="long-mode-pcid")
w
"""),
    md("""
## CR0.WP, today

grsecurity's kernel clears CR0.WP around writes to read-only data. From code, the same
as clicking **WP**:
"""),
    code("""
w.parts.bits["WP"].value = False
w.parts.tdp
"""),
    md("""
Under TDP nothing happened in KVM: on VMX with EPT the guest owns CR0.WP, so the write
did not exit and the root is `KEPT`.
"""),
    code("""
w.parts.shadow
"""),
    md("""
Under shadow paging WP is in the root's role: the root was `FREED` and a new one built.

## The same action in v5.17
"""),
    code("""
w.parts.era.value = "v5.17"
w.parts.tdp
"""),
    md("""
Switching era replays the same events. In v5.17 the write exits, `kvm_mmu_reset_context()`
unloads the root, and because no one else holds it the whole TDP tree is `DESTROYED`
and rebuilt at the next entry.

## An illegal write
"""),
    code("""
w.parts.bits["LA57"].value = True
w.parts.bits["LA57"].value
"""),
    md("""
The guest gets #GP (5-level paging cannot change in long mode); the button springs back
and the panes say nothing changed.

## Summary

* One action, two MMUs: what is a full reset under shadow paging may be nothing at all under TDP.
* Where a root comes from (`same`, `cache`, `hash`, `shared`, `preserved`, `new`) is the
  cost: a new root starts empty and every guest access faults it in again.

## Exercises

1. In v5.17, set the vCPU count to 2 and toggle WP on vCPU 0. Is the TDP root destroyed?
2. In v6.18, press **SMI** and then **RSM**. Where does the TDP root come from after RSM?
3. Choose CR3 0x2001 without no-flush, press MOV CR3, then **INVPCID** type 1. Which roots are freed?

## Checks
"""),
    code("""
import re
first = w.parts.state.sims["tdp"].outcomes[0]
assert first["destroyed"] == [1] and first["root_source"] == "new"       # v5.17, replayed
assert 'data-fault="GP"' in w.parts.shadow.value and w.parts.bits["LA57"].value is False
"""),
    code("""
w.parts.buttons["Undo"].click(); w.parts.era.value = "v6.18"
assert re.search(r'data-state="kept" data-root="1"', w.parts.tdp.value)
"""),
    md("""
## Predict, then reveal

Each question below sets up a guest and names one more action. Mark each root freed or
kept, say where the current root will come from and whether a TLB flush happens, then
press **Reveal**. The same questions come from `python -m mmu_model quiz -s 1 -n 3`.
"""),
    code("""
from mmu_model.widgets import predict
quiz = predict(seed=1, n=3)
quiz
"""),
]

FLOWS = [
    md("""
# 05 · Other flows: SMM, KVM_SET_SREGS and INIT

**The question:** besides register writes, what else makes KVM drop roots, and which
roots survive it?
""" + VOCAB + """
* **SMM** – system management mode: an SMI switches the guest into a separate address
  space (the role's `smm` field); RSM returns.
* **KVM_SET_SREGS** – the ioctl userspace uses to set the registers (e.g. after migration).
* **INIT** – the signal that resets a vCPU's registers.
"""),
    code("""
from mmu_model.widgets import LabState, panes
state = LabState("v6.18", "vmx", vcpus=1, start="long-mode-pcid")
smi = state.apply({"op": "smi"})
panes(state)
"""),
    md("""
Entering SMM resets the MMU twice (once for the change of address space, once after the
registers are set to SMM values). Under shadow paging, SMM runs with paging off, so the
new root is a `special` PAE root. Under TDP a new root is built for the `smm=1` role.

## RSM
"""),
    code("""
rsm = state.apply({"op": "rsm"})
panes(state)
"""),
    md("""
Leaving SMM walks the registers back; under shadow paging the root comes from the hash,
under TDP (v6.4+) the old root was `preserved` by the TDP MMU's own reference.

## KVM_SET_SREGS
"""),
    code("""
sregs = state.apply({"op": "set_sregs", **state.start_registers(), "cr3": 0x2001})
sregs["shadow"]["tlb_flushes"], sregs["tdp"]["requests"]
"""),
    md("""
Any change of CR0, CR3, CR4 or EFER through the ioctl resets the MMU; since v6.6 it also
flushes the guest's TLB (`KVM_REQ_TLB_FLUSH_GUEST`).

## INIT
"""),
    code("""
init = state.apply({"op": "init"})
panes(state)
"""),
    md("""
INIT puts the registers back to their reset values: paging off. Under shadow paging the
root is a special PAE root again; under TDP the same preserved root is used, since the
TDP root role does not depend on the guest's paging mode.

## Summary

* SMI and RSM each reset the MMU; under TDP the SMM address space has its own roots.
* From v6.4 the TDP MMU keeps its roots alive, so RSM, KVM_SET_SREGS and INIT find them
  `preserved`; before, a single vCPU rebuilt them from nothing.

## Exercises

1. Redo this notebook with `LabState("v5.17", ...)`. Count the TDP roots destroyed.
2. Send an SMI while in SMM (`state.apply({"op": "smi"})` twice). What does `reason` say?

## Checks
"""),
    code("""
assert smi["shadow"]["root"]["kind"] == "special" and smi["tdp"]["root"]["role"]["smm"] == 1
assert rsm["tdp"]["root_source"] == "preserved" and init["tdp"]["root_source"] == "preserved"
assert "KVM_REQ_TLB_FLUSH_GUEST" in sregs["tdp"]["requests"]
"""),
]

SCALE = [
    md("""
# 06 · At scale: history presets and random workloads

**The question:** over whole workloads, how many roots does each era build, and how does
that change with the number of vCPUs?
""" + VOCAB + """
* **roots built** – `roots_allocated` in the totals: each is an empty tree the guest must
  fault in again.
"""),
    md("""
## grsecurity's CR0.WP loop, per era and mode

`scenarios/history/grsecurity-wp.json` toggles CR0.WP twenty times on one vCPU.
"""),
    code("""
%matplotlib inline
import matplotlib.pyplot as plt
from mmu_model import load_scenario
from mmu_model.plots import counts_table, plot_counts, plot_timeline, vcpu_table
"""),
    code("""
wp = counts_table(load_scenario("../scenarios/history/grsecurity-wp.json"),
                  ["v5.17", "seed-v1", "v5.19", "v6.4", "v6.18"], ["shadow", "tdp", "tdp-legacy"])
fig, ax = plt.subplots(figsize=(9, 3.5)); plot_counts(ax, wp, ylabel="roots built"); plt.show()
"""),
    md("""
Under the TDP MMU, v5.17 and v5.19 build a root on every toggle: the reset drops the
only reference and the tree goes with it. The unmerged seed-v1 and v6.4+ build none after
the first; shadow paging finds its roots again in the hash.

## Root lifetimes

The same loop as a timeline: one bar per root, from the step it is held to the step it is
freed; ✕ marks a destroyed tree, the top row the TLB flushes.
"""),
    code("""
from mmu_model import run_scenario
steps = run_scenario(load_scenario("../scenarios/history/grsecurity-wp.json"), "v5.17", "tdp")["steps"][:8]
fig, ax = plt.subplots(figsize=(9, 3.5)); plot_timeline(ax, steps); plt.show()
"""),
    md("""
Each root lives exactly one step. Under v6.18 the same chart is a single bar.

## More vCPUs

A seeded random workload (mostly MOV CR3 among five PCIDs, some CR0.WP and CR4.PGE
pairs, INVLPG, SMI/RSM), 200 events, with TDP:
"""),
    code("""
by_vcpus = vcpu_table(["v5.17", "v5.19", "v6.18"], [1, 2, 4, 8], mode="tdp", n=200)
fig, ax = plt.subplots(figsize=(9, 3.5))
plot_counts(ax, by_vcpus, ylabel="roots built", xlabel="vCPUs"); plt.show()
"""),
    md("""
With one vCPU, v5.17 and v5.19 rebuild the tree after almost every reset. With two or
more, another vCPU usually still holds the root (`shared`), and from v5.19, where guest
CR0.WP no longer picks a different TDP root, that is enough to keep it. v6.18 builds a
single root in the whole run: the TDP MMU's own reference outlives every reset.

## Summary

* The cost of a role change is the empty tree it forces; eras differ by orders of magnitude
  on the same workload.
* Sharing by role helps once there are several vCPUs; the TDP MMU's own reference (v6.4)
  helps always.

## Exercises

1. Draw `vcpu_table(..., mode="shadow")`. Why does the vCPU count not matter there?
2. Plot `pcid-context-switch.json` per era for shadow paging. Which era builds fewest roots?

## Checks
"""),
    code("""
assert wp["v5.17"]["tdp"] == 20 and wp["v6.18"]["tdp"] == 0 and wp["seed-v1"]["tdp"] <= 1
assert by_vcpus[1]["v5.17"] > by_vcpus[2]["v5.17"] and all(r["v6.18"] == 1 for r in by_vcpus.values())
"""),
]

NOTEBOOKS_CELLS = {"01-two-ways.ipynb": TWO_WAYS, "02-mmu-role.ipynb": ROLE,
                   "03-root-cache.ipynb": CACHE, "04-lab.ipynb": LAB,
                   "05-other-flows.ipynb": FLOWS, "06-at-scale.ipynb": SCALE}


def main():
    NOTEBOOKS.mkdir(exist_ok=True)
    for name, cells in {"00-index.ipynb": INDEX, **NOTEBOOKS_CELLS}.items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}})
        nbformat.write(nb, NOTEBOOKS / name)
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
