"""The architecture's side: what an x86 CPU lets a guest observe, kept apart
from what KVM does.

* ``guest`` - the guest's page tables, the TLB contents the SDM still allows
  after each invalidation (ArchTlb, EptArchTlb) and the hardware TLB (HwTlb);
* ``checker`` - after every step, each vCPU's view of each address compared
  with what the architecture allows; anything else is a violation.

May import: the kernel mirror (to read KVM's state); nothing above it.  The
harness attaches it to a VM; the kernel mirror never imports it.
"""
