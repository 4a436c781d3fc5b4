"""The guest's side of the architectural checker: its page tables, what the
architecture lets its TLB still hold, and the hardware TLB that KVM drives.

* :class:`GuestMemory` - leaf page-table entries per address space (keyed by
  the CR3 frame), with a few default mappings so that every CR3 value names a
  usable address space.
* :class:`ArchTlb` - per vCPU, every translation the architecture allows the
  guest to observe: anything that was present in the active paging
  structures under a PCID since the last invalidation the SDM requires
  (x86-tlb-rules §1; the invalidations are a minimum, a CPU may drop more).
* :class:`HwTlb` - per vCPU, what the hardware TLB actually caches: linear
  translations tagged by PCID and, under TDP, by the EPTP (the TDP root).

This module imports nothing from the model; the model and the checker call it.
"""
from __future__ import annotations

from .registers import PAGE_SHIFT

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_G = 1 << 8
PTE_NX = 1 << 63
PTE_FRAME = ((1 << 52) - 1) & ~((1 << PAGE_SHIFT) - 1)

# Default mappings of every address space: two user pages private to the
# space, and a kernel page mapped global and identically in all spaces.
USER_A = 0x400000
USER_B = 0x401000
KERNEL_A = 0xFFFFFFFF81000000
DEFAULT_ADDRS = (USER_A, USER_B, KERNEL_A)


def pte(frame: int, *, rw=True, user=False, glob=False, nx=False, present=True) -> int:
    """A leaf entry in the architecture's layout."""
    return ((frame << PAGE_SHIFT) | (PTE_P if present else 0) | (PTE_RW if rw else 0)
            | (PTE_US if user else 0) | (PTE_G if glob else 0) | (PTE_NX if nx else 0))


def describe(value) -> str:
    """A short human form of a leaf entry: frame and flags."""
    if value is None or not value & PTE_P:
        return "not present"
    flags = "".join(f for f, bit in (("W", PTE_RW), ("U", PTE_US), ("G", PTE_G), ("X", 0))
                    if (bit and value & bit) or (not bit and not value & PTE_NX))
    return f"frame {(value & PTE_FRAME) >> PAGE_SHIFT:#x} {flags}"


class GuestMemory:
    """Leaf PTEs per address space (CR3 frame number -> {linear page -> pte})."""

    def __init__(self):
        self.tables: dict[int, dict[int, int]] = {}

    def table(self, space: int) -> dict[int, int]:
        t = self.tables.get(space)
        if t is None:
            t = self.tables[space] = {
                USER_A: pte(0x1000 + 2 * space, user=True),
                USER_B: pte(0x1001 + 2 * space, user=True),
                KERNEL_A: pte(0x800, glob=True),
            }
        return t

    def read(self, space: int, addr: int):
        return self.table(space).get(addr)

    def write(self, space: int, addr: int, value: int) -> None:
        self.table(space)[addr] = value


class ArchTlb:
    """What the architecture allows this vCPU's TLB to hold.

    ``entries`` maps (pcid, addr) to {pte value: global?}; ``removed`` remembers,
    for each (pcid, addr, value) dropped, the step whose invalidation dropped it.
    """

    def __init__(self):
        self.entries: dict[tuple, dict[int, bool]] = {}
        self.removed: dict[tuple, int] = {}

    def observe(self, pcid: int, table: dict[int, int]) -> None:
        """The CPU may cache any present translation of the active tables."""
        for addr, value in table.items():
            if value & PTE_P:
                self.entries.setdefault((pcid, addr), {})[value] = bool(value & PTE_G)

    def allowed(self, pcid: int, addr: int) -> set:
        out = set(self.entries.get((pcid, addr), ()))
        for (p, a), values in self.entries.items():
            if a == addr and p != pcid:
                out.update(v for v, g in values.items() if g)
        return out

    def _drop(self, step: int, keep) -> None:
        for (pcid, addr), values in list(self.entries.items()):
            for value, glob in list(values.items()):
                if not keep(pcid, addr, glob):
                    del values[value]
                    self.removed[(pcid, addr, value)] = step
            if not values:
                del self.entries[(pcid, addr)]

    # The SDM's minimum invalidations (x86-tlb-rules §1.1, §1.6)
    def flush_all(self, step):
        self._drop(step, lambda p, a, g: False)

    def flush_nonglobal(self, step):
        self._drop(step, lambda p, a, g: g)

    def flush_pcid_nonglobal(self, step, pcid):
        self._drop(step, lambda p, a, g: p != pcid or g)

    def flush_pcid(self, step, pcid):
        self._drop(step, lambda p, a, g: p != pcid)

    def flush_addr(self, step, pcid, addr):
        """INVLPG: the address under the current PCID, and global entries for it."""
        self._drop(step, lambda p, a, g: a != addr or (p != pcid and not g))

    def flush_pcid_addr_nonglobal(self, step, pcid, addr):
        self._drop(step, lambda p, a, g: a != addr or p != pcid or g)


class HwTlb:
    """The hardware TLB of one vCPU: (pcid, addr) -> (pte value, global, tag).

    ``tag`` is the TDP root (EPTP) the combined mapping was made under, or None
    for the linear mappings of shadow paging.  A lookup needs the current tag.
    """

    def __init__(self):
        self.entries: dict[tuple, tuple] = {}

    def lookup(self, pcid, addr, tag):
        e = self.entries.get((pcid, addr))
        if e is not None and e[2] == tag:
            return e[0]
        for (p, a), (value, glob, t) in self.entries.items():
            if a == addr and glob and t == tag:
                return value
        return None

    def fill(self, pcid, addr, value, tag):
        self.entries[(pcid, addr)] = (value, bool(value & PTE_G), tag)

    def _drop(self, keep):
        self.entries = {k: e for k, e in self.entries.items() if keep(k[0], k[1], e[1], e[2])}

    def flush_all(self):
        self.entries.clear()

    def flush_tag(self, tag):
        self._drop(lambda p, a, g, t: t != tag)

    def flush_addr_all_pcids(self, addr):
        self._drop(lambda p, a, g, t: a != addr)

    # native execution of guest instructions (TDP): the SDM's minimum
    def flush_nonglobal(self):
        self._drop(lambda p, a, g, t: g)

    def flush_pcid_nonglobal(self, pcid):
        self._drop(lambda p, a, g, t: p != pcid or g)

    def flush_pcid(self, pcid):
        self._drop(lambda p, a, g, t: p != pcid)

    def flush_addr(self, pcid, addr):
        self._drop(lambda p, a, g, t: a != addr or (p != pcid and not g))

    def flush_pcid_addr_nonglobal(self, pcid, addr):
        self._drop(lambda p, a, g, t: a != addr or p != pcid or g)
