"""Control registers, EFER and CR3 fields, named as in the kernel's headers.

Bit names follow arch/x86/include/uapi/asm/processor-flags.h (CR0, CR3, CR4)
and arch/x86/include/asm/msr-index.h (EFER).  Everything else in the model
uses these flags; no raw ``1 << n`` appears outside this module.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class X86_CR0(enum.IntFlag):
    """CR0 bits (processor-flags.h: X86_CR0_*)."""
    PE = 1 << 0
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4
    NE = 1 << 5
    WP = 1 << 16
    AM = 1 << 18
    NW = 1 << 29
    CD = 1 << 30
    PG = 1 << 31


class X86_CR4(enum.IntFlag):
    """CR4 bits (processor-flags.h: X86_CR4_*)."""
    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4
    PAE = 1 << 5
    MCE = 1 << 6
    PGE = 1 << 7
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22


class EFER(enum.IntFlag):
    """EFER bits (msr-index.h: EFER_*)."""
    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NX = 1 << 11


class X86_FEATURE(enum.Flag):
    """Guest CPUID features that gate register writes (cpufeatures.h names)."""
    PCID = enum.auto()
    INVPCID = enum.auto()
    SMEP = enum.auto()
    SMAP = enum.auto()
    PKU = enum.auto()
    LA57 = enum.auto()


# The kernel's macro names as plain ints (X86_CR0_PG, X86_CR4_PCIDE, EFER_NX, ...).
# The model's hot paths test bits with these: IntFlag arithmetic is slow in
# CPython, and these read exactly like the kernel source.
for _flags, _prefix in ((X86_CR0, "X86_CR0_"), (X86_CR4, "X86_CR4_"), (EFER, "EFER_")):
    for _bit in _flags:
        globals()[_prefix + _bit.name] = int(_bit)


ALL_FEATURES = (X86_FEATURE.PCID | X86_FEATURE.INVPCID | X86_FEATURE.SMEP
                | X86_FEATURE.SMAP | X86_FEATURE.PKU | X86_FEATURE.LA57)

# processor-flags.h
X86_CR3_PCID_NOFLUSH = 1 << 63
X86_CR3_PCID_MASK = 0xFFF
# A PAE-paging CR3 holds a 32-byte aligned PDPT address (bits 31:5).
PAGE_SHIFT = 12
# A page-table entry's frame bits (4-level and EPT layouts alike, up to 52-bit
# physical addresses), and an EPT entry's read/write/execute bits (SDM 29.3.2).
PTE_FRAME = ((1 << 52) - 1) & ~((1 << PAGE_SHIFT) - 1)
EPT_RWX = 0b111
PAGE_MASK = ~((1 << PAGE_SHIFT) - 1)

# Simplification: the guest's MAXPHYADDR.  A CR3 with a bit set at or above it
# fails kvm_vcpu_is_legal_cr3() and the write gets #GP.
GUEST_MAXPHYADDR = 46

# CR0 bits that the architecture reserves (bits 63:32 are checked separately).
CR0_KNOWN = sum(int(b) for b in X86_CR0)
CR4_KNOWN = sum(int(b) for b in X86_CR4)
EFER_KNOWN = sum(int(b) for b in EFER)

# kvm_host.h: CR4 bits that CPUID features must allow, and bits this model
# never lets a guest set (no VMX/SMX exposed to the guest).
CR4_FEATURE_GATES = {      # checked only when one of these bits is set
    X86_CR4.PCIDE: X86_FEATURE.PCID,
    X86_CR4.SMEP: X86_FEATURE.SMEP,
    X86_CR4.SMAP: X86_FEATURE.SMAP,
    X86_CR4.PKE: X86_FEATURE.PKU,
    X86_CR4.LA57: X86_FEATURE.LA57,
}
CR4_GATED = int(X86_CR4.PCIDE | X86_CR4.SMEP | X86_CR4.SMAP | X86_CR4.PKE | X86_CR4.LA57)
CR4_NEVER = int(X86_CR4.VMXE | X86_CR4.SMXE)

# x86.h: X86_CR4_PDPTR_BITS, the CR4 bits whose change reloads PAE PDPTRs.
X86_CR4_PDPTR_BITS = int(X86_CR4.PGE | X86_CR4.PSE | X86_CR4.PAE | X86_CR4.SMEP)
# x86.c: X86_CR0_PDPTR_BITS
X86_CR0_PDPTR_BITS = int(X86_CR0.CD | X86_CR0.NW | X86_CR0.PG)


REGISTER_FLAGS = {"cr0": X86_CR0, "cr4": X86_CR4, "efer": EFER}


def bit_names(reg: str, value: int) -> list[str]:
    """The kernel names of the bits set in ``value`` for register ``reg``."""
    flags = REGISTER_FLAGS[reg]
    return [b.name for b in flags if value & b]


def bit_by_name(reg: str, name: str) -> int:
    """The bit of register ``reg`` called ``name``; KeyError if unknown."""
    return int(REGISTER_FLAGS[reg][name])


@dataclass(frozen=True)
class RegisterPreset:
    """A named starting point for a vCPU's paging registers."""
    name: str
    cr0: int
    cr3: int
    cr4: int
    efer: int
    description: str

    def registers(self) -> dict:
        """The preset as a start-state dict (cr0, cr3, cr4, efer)."""
        return {"cr0": self.cr0, "cr3": self.cr3, "cr4": self.cr4, "efer": self.efer}


_LM_CR0 = X86_CR0.PE | X86_CR0.MP | X86_CR0.ET | X86_CR0.NE | X86_CR0.WP | X86_CR0.AM | X86_CR0.PG
_LM_CR4 = X86_CR4.PAE | X86_CR4.PGE | X86_CR4.OSFXSR | X86_CR4.OSXMMEXCPT
_LM_EFER = EFER.SCE | EFER.LME | EFER.LMA | EFER.NX

PRESETS = {p.name: p for p in [
    RegisterPreset("reset", int(X86_CR0.CD | X86_CR0.NW | X86_CR0.ET), 0, 0, 0,
                   "the state after RESET/INIT: real mode, caches disabled"),
    RegisterPreset("protected", int(X86_CR0.PE | X86_CR0.ET), 0, 0, 0,
                   "protected mode without paging"),
    RegisterPreset("32bit", int(X86_CR0.PE | X86_CR0.ET | X86_CR0.WP | X86_CR0.PG), 0x1000,
                   int(X86_CR4.PSE), 0, "2-level 32-bit paging"),
    RegisterPreset("pae", int(X86_CR0.PE | X86_CR0.ET | X86_CR0.WP | X86_CR0.PG), 0x1000,
                   int(X86_CR4.PAE | X86_CR4.PGE), int(EFER.NX), "3-level PAE paging"),
    RegisterPreset("long-mode", int(_LM_CR0), 0x1000, int(_LM_CR4), int(_LM_EFER),
                   "4-level 64-bit paging, PCIDs off"),
    RegisterPreset("long-mode-pcid", int(_LM_CR0), 0x1000, int(_LM_CR4 | X86_CR4.PCIDE),
                   int(_LM_EFER), "4-level 64-bit paging with CR4.PCIDE=1"),
    RegisterPreset("linux", int(_LM_CR0), 0x1000,
                   int(_LM_CR4 | X86_CR4.PCIDE | X86_CR4.SMEP | X86_CR4.SMAP | X86_CR4.OSXSAVE
                       | X86_CR4.FSGSBASE), int(_LM_EFER),
                   "what a current 64-bit Linux guest runs with (PCID, SMEP, SMAP)"),
]}
