"""MMU roles: the page role of a root, the extended role, and their formulas.

KVM compares roles as machine words: two roots are interchangeable only if
their ``union kvm_mmu_page_role`` words are identical.  The model packs the
fields in the kernel's bit order so that ``role.word`` reads as it would in
a kernel tracepoint.

Mirrors: arch/x86/include/asm/kvm_host.h: union kvm_mmu_page_role,
union kvm_mmu_extended_role, union kvm_cpu_role (v5.19+; union kvm_mmu_role
before).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from .registers import (
    EFER_LMA,
    EFER_NX,
    X86_CR0_PG,
    X86_CR0_WP,
    X86_CR4_LA57,
    X86_CR4_PAE,
    X86_CR4_PKE,
    X86_CR4_PSE,
    X86_CR4_SMAP,
    X86_CR4_SMEP,
)

# mmu.h levels
PT32_ROOT_LEVEL = 2
PT32E_ROOT_LEVEL = 3
PT64_ROOT_4LEVEL = 4
PT64_ROOT_5LEVEL = 5
ACC_ALL = 7
# Simplification: the host builds 4-level EPT/NPT tables
# (kvm_mmu_get_tdp_level() with a guest MAXPHYADDR below 48).
TDP_ROOT_LEVEL = PT64_ROOT_4LEVEL

# (name, bit offset, width) in union kvm_mmu_page_role, kernel order.
PAGE_ROLE_LAYOUT = (
    ("level", 0, 4), ("has_4_byte_gpte", 4, 1), ("quadrant", 5, 2), ("direct", 7, 1),
    ("access", 8, 3), ("invalid", 11, 1), ("efer_nx", 12, 1), ("cr0_wp", 13, 1),
    ("smep_andnot_wp", 14, 1), ("smap_andnot_wp", 15, 1), ("ad_disabled", 16, 1),
    ("guest_mode", 17, 1), ("passthrough", 18, 1), ("is_mirror", 19, 1), ("smm", 24, 8),
)
EXT_ROLE_FIELDS = ("valid", "execonly", "cr0_pg", "cr4_pae", "cr4_pse", "cr4_pke",
                   "cr4_smap", "cr4_smep", "cr4_la57", "efer_lma")


@dataclass(frozen=True, slots=True, eq=False)
class KvmMmuPageRole:
    """union kvm_mmu_page_role: what a shadow page or root was built for.

    Equality is equality of ``word``, as in the kernel's ``role.word ==``.
    """
    level: int = 0
    has_4_byte_gpte: bool = False
    quadrant: int = 0
    direct: bool = False
    access: int = ACC_ALL
    invalid: bool = False
    efer_nx: bool = False
    cr0_wp: bool = False
    smep_andnot_wp: bool = False
    smap_andnot_wp: bool = False
    ad_disabled: bool = False
    guest_mode: bool = False
    passthrough: bool = False
    is_mirror: bool = False
    smm: int = 0
    word: int = 0

    def __post_init__(self):
        w = 0
        for name, shift, _width in PAGE_ROLE_LAYOUT:
            w |= int(getattr(self, name)) << shift
        object.__setattr__(self, "word", w)

    def __eq__(self, other):
        return self is other or (isinstance(other, KvmMmuPageRole) and self.word == other.word)

    def __hash__(self):
        return self.word

    def replace(self, **changes) -> "KvmMmuPageRole":
        """A copy with some fields changed (the kernel's ``role.x = y`` on a copy)."""
        fields = {name: getattr(self, name) for name, _s, _w in PAGE_ROLE_LAYOUT}
        fields.update(changes)
        return intern_role(**fields)


@lru_cache(maxsize=None)
def _intern(items):
    return KvmMmuPageRole(**dict(items))


def intern_role(**fields) -> KvmMmuPageRole:
    """One shared object per distinct role, so the hot path compares by identity."""
    return _intern(tuple(sorted(fields.items())))


@dataclass(frozen=True, slots=True)
class KvmMmuExtendedRole:
    """union kvm_mmu_extended_role: CPU-mode bits that are not in the page role."""
    valid: bool = True
    execonly: bool = False
    cr0_pg: bool = False
    cr4_pae: bool = False
    cr4_pse: bool = False
    cr4_pke: bool = False
    cr4_smap: bool = False
    cr4_smep: bool = False
    cr4_la57: bool = False
    efer_lma: bool = False


@dataclass(frozen=True, slots=True)
class KvmCpuRole:
    """union kvm_cpu_role (v5.19+) / union kvm_mmu_role (before): base + ext."""
    base: KvmMmuPageRole
    ext: KvmMmuExtendedRole


class RoleRegs(NamedTuple):
    """struct kvm_mmu_role_regs plus the hflags that roles read (SMM, guest mode)."""
    cr0: int
    cr4: int
    efer: int
    smm: bool
    guest_mode: bool = False


def role_regs(vcpu) -> RoleRegs:
    """vcpu_to_role_regs(): the register bits the role formulas read."""
    return RoleRegs(vcpu.cr0 & (X86_CR0_PG | X86_CR0_WP),
                    vcpu.cr4 & (X86_CR4_PSE | X86_CR4_PAE | X86_CR4_LA57 | X86_CR4_SMEP
                                | X86_CR4_SMAP | X86_CR4_PKE),
                    vcpu.efer & (EFER_NX | EFER_LMA), vcpu.smm, vcpu.guest_mode)


def role_as_dict(role: KvmMmuPageRole, fields) -> dict:
    """The role's fields by kernel name, in kernel order, restricted to ``fields``."""
    return dict(_role_items(role, tuple(fields)))


@lru_cache(maxsize=None)
def _role_items(role: KvmMmuPageRole, fields: tuple) -> tuple:
    items = []
    for name, _shift, width in PAGE_ROLE_LAYOUT:
        if name == "has_4_byte_gpte" and "gpte_is_8_bytes" in fields:
            # v5.15 and before: the same bit, named for the opposite meaning
            items.append(("gpte_is_8_bytes", not role.has_4_byte_gpte))
        elif name in fields:
            v = getattr(role, name)
            items.append((name, bool(v) if width == 1 else int(v)))
    return tuple(items)


# ---------------------------------------------------------------------------
# Small predicates on RoleRegs, named after the kernel's ____is_* helpers.

def is_cr0_pg(r: RoleRegs) -> bool:
    return bool(r.cr0 & X86_CR0_PG)


def is_cr0_wp(r: RoleRegs) -> bool:
    return bool(r.cr0 & X86_CR0_WP)


def is_cr4_pae(r: RoleRegs) -> bool:
    return bool(r.cr4 & X86_CR4_PAE)


def is_efer_lma(r: RoleRegs) -> bool:
    return bool(r.efer & EFER_LMA)


def guest_paging_level(r: RoleRegs) -> int:
    """role_regs_to_root_level(): the guest's paging levels (0 with paging off)."""
    if not is_cr0_pg(r):
        return 0
    if is_efer_lma(r):
        return PT64_ROOT_5LEVEL if r.cr4 & X86_CR4_LA57 else PT64_ROOT_4LEVEL
    return PT32E_ROOT_LEVEL if is_cr4_pae(r) else PT32_ROOT_LEVEL


def calc_mmu_role_ext(r: RoleRegs, with_pg_pae: bool) -> KvmMmuExtendedRole:
    """kvm_calc_mmu_role_ext(): the extended role (cr0_pg/cr4_pae only up to v5.18).

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_calc_mmu_role_ext() (v5.17),
    the ext half of kvm_calc_cpu_role() (v5.19+).
    """
    if not is_cr0_pg(r):
        return _ext(valid=True)
    lma = is_efer_lma(r)
    return _ext(valid=True, cr0_pg=with_pg_pae, cr4_pae=with_pg_pae and is_cr4_pae(r),
                cr4_pse=bool(r.cr4 & X86_CR4_PSE), cr4_pke=lma and bool(r.cr4 & X86_CR4_PKE),
                cr4_smap=bool(r.cr4 & X86_CR4_SMAP), cr4_smep=bool(r.cr4 & X86_CR4_SMEP),
                cr4_la57=lma and bool(r.cr4 & X86_CR4_LA57), efer_lma=lma)


@lru_cache(maxsize=None)
def _ext(**kw) -> KvmMmuExtendedRole:
    return KvmMmuExtendedRole(**kw)
