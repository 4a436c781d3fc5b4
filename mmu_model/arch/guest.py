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
  translations tagged by PCID and by (VPID, EPTP) - the EPTP being the TDP
  root on VMX - and, for nested TDP, L2's guest-physical translations
  tagged by the EPTP of the shadow EPT root.
* :class:`EptArchTlb` - per vCPU, the guest-physical translations of L1's
  EPT/NPT tables that the architecture lets L2 still use (SDM 28.3.3: only
  INVEPT, or an EPT violation for that address, removes them).

This module imports only the architecture's constants (kernel/registers.py);
the harness and the checker call it, the kernel mirror never does.
"""
from __future__ import annotations

from ..kernel.registers import EPT_RWX, PAGE_SHIFT, PTE_FRAME

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_G = 1 << 8
PTE_NX = 1 << 63

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


# EPT entries (SDM 29.3.2): read, write and execute permission in bits 0-2.
EPT_R, EPT_W, EPT_X = 1, 2, 4          # EPT_RWX (all three) is in kernel/registers.py
# Where L1 puts L2's memory by default: L2 page n at L1 page n + EPT_OFFSET.
EPT_OFFSET = 0x100000


def ept_entry(frame: int, perms: int = EPT_RWX) -> int:
    return (frame << PAGE_SHIFT) | perms


def describe_ept(value) -> str:
    """A short human form of an EPT/NPT leaf entry."""
    if value is None or not value & EPT_RWX:
        return "not present"
    perms = "".join(c for c, bit in (("R", EPT_R), ("W", EPT_W), ("X", EPT_X)) if value & bit)
    return f"L1 frame {(value & PTE_FRAME) >> PAGE_SHIFT:#x} {perms}"


class GuestMemory:
    """Leaf PTEs per address space (CR3 frame number -> {linear page -> pte}),
    and, for nested TDP, L1's EPT/NPT leaf entries per table (EPTP or nCR3
    frame -> {L2 guest-physical page -> entry})."""

    def __init__(self):
        self.tables: dict[int, dict[int, int]] = {}
        self.ept: dict[int, dict[int, int]] = {}
        self.version = 0            # bumped by every write, for the checker's caches

    def table(self, space: int) -> dict[int, int]:
        t = self.tables.get(space)
        if t is None:
            t = self.tables[space] = {
                USER_A: pte(0x1000 + 2 * space, user=True),
                USER_B: pte(0x1001 + 2 * space, user=True),
                KERNEL_A: pte(0x800, glob=True),
            }
            self.version += 1
        return t

    def read(self, space: int, addr: int):
        return self.table(space).get(addr)

    def write(self, space: int, addr: int, value: int) -> None:
        self.table(space)[addr] = value
        self.version += 1

    def ept_read(self, table: int, gpa: int) -> int:
        """L1's entry for L2 page ``gpa``; unwritten entries map it RWX at
        gpa + EPT_OFFSET (every EPT table starts as that identity-like map)."""
        value = self.ept.get(table, {}).get(gpa)
        return ept_entry((gpa >> PAGE_SHIFT) + EPT_OFFSET) if value is None else value

    def ept_write(self, table: int, gpa: int, value: int) -> None:
        self.ept.setdefault(table, {})[gpa] = value
        self.version += 1

    def l2_gpas(self, table: int) -> set:
        """Every L2 page an L2 access could reach: the frames of the present
        entries of every address space, and those L1's table names."""
        gpas = {v & PTE_FRAME for t in self.tables.values() for v in t.values() if v & PTE_P}
        gpas.update(self.ept.get(table, ()))
        return gpas


class ArchTlb:
    """What the architecture allows this vCPU's TLB to hold.

    ``entries`` maps (pcid, addr) to {pte value: global?}; ``removed`` remembers,
    for each (pcid, addr, value) dropped, the step whose invalidation dropped it.
    ``version`` counts the changes (for the checker's caches).
    """
    __slots__ = ("entries", "removed", "version")

    def __init__(self):
        self.entries: dict[tuple, dict[int, bool]] = {}
        self.removed: dict[tuple, int] = {}
        self.version = 0

    def observe(self, pcid: int, table: dict[int, int]) -> None:
        """The CPU may cache any present translation of the active tables."""
        entries = self.entries
        for addr, value in table.items():
            if value & PTE_P:
                seen = entries.get((pcid, addr))
                if seen is None:
                    seen = entries[(pcid, addr)] = {}
                if value not in seen:
                    seen[value] = bool(value & PTE_G)
                    self.version += 1

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
                    self.version += 1
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

    def flush_addr_all_pcids(self, step, addr):
        """INVVPID individual-address: the address in every PCID, globals too."""
        self._drop(step, lambda p, a, g: a != addr)


class EptArchTlb:
    """The guest-physical mappings the architecture lets L2 still use.

    ``entries`` maps (EPT table, L2 page) to the set of entries seen present
    while L2 ran on that table; ``removed`` remembers which step's INVEPT or
    EPT violation dropped each one.
    """

    __slots__ = ("entries", "removed", "seen", "version")

    def __init__(self):
        self.entries: dict[tuple, set] = {}
        self.removed: dict[tuple, int] = {}
        self.seen = None            # (memory version, table, drops) of the last observe
        self.version = 0            # counts the changes (for the checker's caches)

    def observe(self, table: int, mapping: dict) -> None:
        for gpa, value in mapping.items():
            if value & EPT_RWX:
                seen = self.entries.setdefault((table, gpa), set())
                if value not in seen:
                    seen.add(value)
                    self.version += 1

    def allowed(self, table: int, gpa: int) -> set:
        return self.entries.get((table, gpa), set())

    def _drop(self, step, keep) -> None:
        self.seen = None
        self.version += 1
        for (table, gpa), values in list(self.entries.items()):
            if not keep(table, gpa):
                for value in values:
                    self.removed[(table, gpa, value)] = step
                del self.entries[(table, gpa)]

    def flush_table(self, step, table):
        """INVEPT single-context (SDM 28.3.3.1)."""
        self._drop(step, lambda t, g: t != table)

    def flush_all(self, step):
        """INVEPT all-context."""
        self._drop(step, lambda t, g: False)

    def flush_gpa(self, step, table, gpa):
        """An EPT violation drops the mapping that caused it."""
        self._drop(step, lambda t, g: (t, g) != (table, gpa))


class HwTlb:
    """The hardware TLB of one vCPU.

    ``entries``: (pcid, addr) -> (pte value, global, tag), where ``tag`` is
    (VPID, EPTP): the VPID the hardware ran the guest with (the model's 1 for
    vpid01 and L1, 2 for L2's vpid02; SVM's one ASID is 1) and the TDP root the
    combined mapping was made under (None for shadow paging and SVM).  A
    lookup needs the current tag.  ``gpa``: (EPTP, L2 page) -> EPT entry, the
    guest-physical mappings of nested TDP, which only an INVEPT of that EPTP
    (flush_eptp) or a full flush removes.  ``version`` counts the changes
    (for the checker's caches).
    """
    __slots__ = ("entries", "gpa", "version")

    def __init__(self):
        self.entries: dict[tuple, tuple] = {}
        self.gpa: dict[tuple, int] = {}
        self.version = 0

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
        self.version += 1

    def set_gpa(self, key, value):
        """A guest-physical mapping cached (nested TDP)."""
        self.gpa[key] = value
        self.version += 1

    def drop_gpa(self, key):
        if self.gpa.pop(key, None) is not None:
            self.version += 1

    def _drop(self, keep, vpid=None):
        """Drop entries ``keep`` rejects; with ``vpid``, only that VPID's."""
        if not self.entries:
            return
        kept = {k: e for k, e in self.entries.items()
                if (vpid is not None and e[2][0] != vpid) or keep(k[0], k[1], e[1], e[2])}
        if len(kept) != len(self.entries):
            self.version += 1
        self.entries = kept

    def flush_all(self):
        if self.entries or self.gpa:
            self.version += 1
        self.entries.clear()
        self.gpa.clear()

    def flush_eptp(self, eptp):
        """INVEPT single-context: combined and guest-physical mappings of one EPTP."""
        self._drop(lambda p, a, g, t: t[1] != eptp)
        if self.gpa:
            self.gpa = {k: v for k, v in self.gpa.items() if k[0] != eptp}
            self.version += 1

    def flush_vpid(self, vpid):
        """INVVPID single-context: linear and combined mappings of one VPID."""
        self._drop(lambda p, a, g, t: t[0] != vpid)

    def flush_asid(self, asid):
        """SVM's TLB_CONTROL flush of one ASID: everything tagged with it,
        nested-paging (guest-physical) entries included - SVM tags those
        with the ASID too, not with nCR3 (the model keys them with None)."""
        self.flush_vpid(asid)
        if self.gpa:
            self.gpa = {k: v for k, v in self.gpa.items() if k[0] is not None}
            self.version += 1

    def flush_addr_all_pcids(self, addr, vpid):
        self._drop(lambda p, a, g, t: a != addr or t[0] != vpid)

    # native execution of guest instructions (TDP): the SDM's minimum, for
    # the VPID the guest runs with
    def flush_nonglobal(self, vpid=None):
        self._drop(lambda p, a, g, t: g, vpid)

    def flush_pcid_nonglobal(self, pcid, vpid=None):
        self._drop(lambda p, a, g, t: p != pcid or g, vpid)

    def flush_pcid(self, pcid, vpid=None):
        self._drop(lambda p, a, g, t: p != pcid, vpid)

    def flush_addr(self, pcid, addr, vpid=None):
        self._drop(lambda p, a, g, t: a != addr or (p != pcid and not g), vpid)

    def flush_pcid_addr_nonglobal(self, pcid, addr, vpid=None):
        self._drop(lambda p, a, g, t: a != addr or p != pcid or g, vpid)
