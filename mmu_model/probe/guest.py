"""The probe's guest: one memory slot, identity page tables, a GDT, code.

Guest-physical layout (one slot of MEM_SIZE bytes at GPA 0)::

    0x001000 .. 0x0ff000   a PML4 at every CR3 frame the scenario uses
    0x100000               GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18)
    0x101000               TSS (104 bytes, unused: nothing changes privilege)
    0x102000               the PDPT every PML4 points to (entry 0 only)
    0x103000               the PD: 2 MiB pages identity-mapping the first 1 GiB
    0x200000 + k*CODE_SIZE vCPU k's program

Every PML4 maps the same identity tables, so any CR3 the scenario switches to
keeps the code running; shadow paging still sees a different guest root per
CR3 frame, which is what the model's roots are.  No IDT: a guest exception
is a triple fault (KVM_EXIT_SHUTDOWN).  The vCPU starts directly in 64-bit
mode (KVM_SET_SREGS), as KVM's selftests do (tools/testing/selftests/kvm/lib/
x86/processor.c: vcpu_init_sregs()).
"""
from __future__ import annotations

import struct

from . import kvm_api as api

MEM_SIZE = 4 << 20
PML4_MIN, PML4_LIMIT = 0x1000, 0x100000     # CR3 frames the probe can back with a PML4
GDT_BASE = 0x100000
TSS_BASE = 0x101000
PDPT_BASE = 0x102000
PD_BASE = 0x103000
CODE_BASE = 0x200000
CODE_SIZE = 0x40000
MAX_VCPUS = (MEM_SIZE - CODE_BASE) // CODE_SIZE

PTE_P, PTE_RW, PTE_PS = 1 << 0, 1 << 1, 1 << 7      # supervisor-only: SMEP never bites
SEL_CODE, SEL_DATA, SEL_TSS = 0x08, 0x10, 0x18

# GDT descriptors (SDM vol. 3, 3.4.5): flat 64-bit code (L=1), flat data.
GDT_CODE64 = 0x00AF9B000000FFFF
GDT_DATA = 0x00CF93000000FFFF


def cr3_frame(cr3: int) -> int:
    """The PML4's guest-physical address in a CR3 value (PCID and flags off)."""
    return cr3 & 0x000F_FFFF_FFFF_F000


def unplaceable_cr3(cr3: int) -> str | None:
    """Why the probe cannot put a PML4 at this CR3's frame, or None."""
    f = cr3_frame(cr3)
    if not PML4_MIN <= f < PML4_LIMIT:
        return (f"CR3 {cr3:#x}: the probe's guest keeps page tables at frames "
                f"{PML4_MIN:#x}..{PML4_LIMIT - 0x1000:#x}")
    return None


def tss_descriptor(base: int, limit: int = 0x67) -> tuple[int, int]:
    """A 16-byte available 64-bit TSS descriptor (type 9), as two u64."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89 << 40) \
        | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56)
    return lo, base >> 32


def write_memory(mem, cr3_frames, programs):
    """Page tables, GDT and each vCPU's program into guest memory."""
    for f in sorted(set(cr3_frames)):
        struct.pack_into("<Q", mem, f, PDPT_BASE | PTE_P | PTE_RW)
    struct.pack_into("<Q", mem, PDPT_BASE, PD_BASE | PTE_P | PTE_RW)
    for i in range(512):
        struct.pack_into("<Q", mem, PD_BASE + 8 * i, (i << 21) | PTE_P | PTE_RW | PTE_PS)
    struct.pack_into("<4Q", mem, GDT_BASE, 0, GDT_CODE64, GDT_DATA, tss_descriptor(TSS_BASE)[0])
    struct.pack_into("<Q", mem, GDT_BASE + 32, tss_descriptor(TSS_BASE)[1])
    for k, code in enumerate(programs):
        if len(code) > CODE_SIZE:
            raise ValueError(f"vCPU {k}'s program is {len(code)} bytes; the probe has {CODE_SIZE}")
        mem[CODE_BASE + k * CODE_SIZE:CODE_BASE + k * CODE_SIZE + len(code)] = code


def _segment(seg, selector, type_, s=1, l_=0, db=1):
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, selector, type_
    seg.present, seg.dpl, seg.s, seg.l, seg.db, seg.g = 1, 0, s, l_, db, 1


def long_mode_sregs(sregs: api.kvm_sregs, regs: dict) -> api.kvm_sregs:
    """Fill sregs (as read from the vCPU) for 64-bit mode with ``regs``'
    CR0/CR3/CR4/EFER."""
    _segment(sregs.cs, SEL_CODE, 11, l_=1, db=0)        # execute/read, accessed
    for name in ("ds", "es", "fs", "gs", "ss"):
        _segment(getattr(sregs, name), SEL_DATA, 3)     # read/write, accessed
    _segment(sregs.tr, SEL_TSS, 11, s=0, db=0)          # busy 64-bit TSS
    sregs.tr.base, sregs.tr.limit, sregs.tr.g = TSS_BASE, 0x67, 0
    sregs.ldt.unusable, sregs.ldt.present = 1, 0
    sregs.gdt.base, sregs.gdt.limit = GDT_BASE, 5 * 8 - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = regs["cr0"], regs["cr3"], regs["cr4"], regs["efer"]
    return sregs


def start_regs(vcpu_index: int) -> api.kvm_regs:
    r = api.kvm_regs()
    r.rip = CODE_BASE + vcpu_index * CODE_SIZE
    r.rsp = CODE_BASE - 0x1000 * vcpu_index        # never used: no push, call or interrupt
    r.rflags = 0x2                                  # bit 1 is reserved-as-one; IF=0
    return r
