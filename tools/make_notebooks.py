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

`./run lab` opens these notebooks in JupyterLab; `./run test` runs every test,
including executing each notebook. Reading order:

0. this index — one scenario, end to end.

The model lives in the `mmu_model` package; the notebooks only call it.
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


def main():
    NOTEBOOKS.mkdir(exist_ok=True)
    for name, cells in {"00-index.ipynb": INDEX}.items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}})
        nbformat.write(nb, NOTEBOOKS / name)
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
