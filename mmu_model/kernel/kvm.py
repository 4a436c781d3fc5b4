"""The VM, its vCPUs, their MMU contexts and the root pages they hold.

Containers are small mutable classes named after the kernel's structs; the
values they hold (roles, root infos) are immutable.  ``hpa`` fields hold the
page object itself, or ``None`` for INVALID_PAGE.

Mirrors: arch/x86/include/asm/kvm_host.h: struct kvm_mmu,
struct kvm_mmu_root_info, struct kvm_vcpu_arch, struct kvm_arch;
arch/x86/kvm/mmu/mmu_internal.h: struct kvm_mmu_page.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from .registers import ALL_FEATURES, X86_CR3_PCID_MASK, X86_CR4_PCIDE
from .roles import KvmCpuRole, KvmMmuPageRole

KVM_MMU_NUM_PREV_ROOTS = 3
# Root-selection flags for kvm_mmu_free_roots() (kvm_host.h).
KVM_MMU_ROOT_CURRENT = 1 << 0


def KVM_MMU_ROOT_PREVIOUS(i: int) -> int:
    return 1 << (1 + i)


PREV_ROOT_FLAGS = tuple(KVM_MMU_ROOT_PREVIOUS(i) for i in range(KVM_MMU_NUM_PREV_ROOTS))


KVM_MMU_ROOTS_ALL = (1 << (1 + KVM_MMU_NUM_PREV_ROOTS)) - 1


class SpteMap(dict):
    """A shadow page's leaf translations (the checker's, not KVM's): a dict
    that counts every change in ``SpteMap.changes``, so the checker can tell
    that no vCPU's view of shadow pages moved since it last looked."""
    __slots__ = ()
    changes = 0

    def __setitem__(self, key, value):
        SpteMap.changes += 1
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        SpteMap.changes += 1
        dict.__delitem__(self, key)

    def pop(self, *args):
        SpteMap.changes += 1
        return dict.pop(self, *args)

    def popitem(self):
        SpteMap.changes += 1
        return dict.popitem(self)

    def setdefault(self, key, default=None):
        SpteMap.changes += 1
        return dict.setdefault(self, key, default)

    def update(self, *args, **kwargs):
        SpteMap.changes += 1
        dict.update(self, *args, **kwargs)

    def clear(self):
        SpteMap.changes += 1
        dict.clear(self)

    def __ior__(self, other):
        SpteMap.changes += 1
        return dict.__ior__(self, other)


class KvmMmuPage:
    """struct kvm_mmu_page, for the pages that serve as roots.

    ``root_count`` counts vCPU slots (current or previous) that point at the
    page.  For TDP MMU roots it is ``tdp_mmu_root_count`` in the kernel and,
    from v6.4, includes one reference owned by the TDP MMU itself.
    """
    __slots__ = ("id", "gfn", "role", "root_count", "tdp_mmu_page", "destroyed",
                 "tdp_mmu_ref", "space", "sptes", "unsync_addrs")

    def __init__(self, id: int, gfn: int, role: KvmMmuPageRole, tdp_mmu_page: bool = False):
        self.id = id
        self.gfn = gfn
        self.role = role
        self.root_count = 0
        self.tdp_mmu_page = tdp_mmu_page
        self.tdp_mmu_ref = False   # v6.4+: the TDP MMU holds a reference of its own
        self.destroyed = False
        # For the architectural checker: the address space (CR3 frame) this
        # page shadows, its leaf translations, and those the guest rewrote
        # since the last sync (a leaf table KVM let go unsync).
        self.space = None
        self.sptes: dict = SpteMap()
        self.unsync_addrs: set = set()

    @property
    def unsync(self) -> bool:
        return bool(self.unsync_addrs)

    @property
    def kind(self) -> str:
        return "tdp_mmu" if self.tdp_mmu_page else ("direct" if self.role.direct else "shadow")

    def __repr__(self):
        return f"<root {self.id} {self.kind} gfn={self.gfn:#x} count={self.root_count}>"


class KvmPaeRoot:
    """The per-MMU ``pae_root`` page: four PDPTE-like pointers to real roots.

    It has no struct kvm_mmu_page behind it, so KVM never caches it in
    prev_roots; each load rebuilds it (the model gives each build an id).
    """
    __slots__ = ("id", "entries", "role")

    def __init__(self, id: int, entries: list, role: KvmMmuPageRole):
        self.id = id
        self.entries = entries
        self.role = role

    kind = "special"

    def __repr__(self):
        ids = [e.id if e else None for e in self.entries]
        return f"<special root {self.id} pae_root={ids}>"


class KvmMmuRootInfo(NamedTuple):
    """struct kvm_mmu_root_info: the guest pgd and the root page (None = INVALID_PAGE)."""
    pgd: int
    hpa: object


KVM_MMU_ROOT_INFO_INVALID = KvmMmuRootInfo(0, None)


def root_to_sp(hpa) -> Optional[KvmMmuPage]:
    """root_to_sp() / to_shadow_page(): the shadow page behind a root, if any."""
    return hpa if type(hpa) is KvmMmuPage else None


class KvmMmu:
    """struct kvm_mmu: one MMU context's roots and roles."""
    __slots__ = ("name", "root", "prev_roots", "cpu_role", "root_role", "root_level", "pdptrs")

    def __init__(self, name: str):
        self.name = name
        self.root = KVM_MMU_ROOT_INFO_INVALID
        self.prev_roots = [KVM_MMU_ROOT_INFO_INVALID] * KVM_MMU_NUM_PREV_ROOTS
        self.cpu_role: Optional[KvmCpuRole] = None
        self.root_role: Optional[KvmMmuPageRole] = None
        self.root_level = 0       # the guest's paging levels (mmu->root_level up to v5.18)
        self.pdptrs = (0, 0, 0, 0)

    def slots(self):
        """(label, root info) for current and each previous root."""
        yield "current", self.root
        for i, r in enumerate(self.prev_roots):
            yield f"prev{i}", r


class Vmcs12:
    """What L1 put in its VMCS for L2 (SVM: its VMCB), as far as roots care.

    ``guest_*`` hold L2's paging registers while L1 runs, ``host_*`` L1's while
    L2 runs; ``ept_pointer`` is the EPTP (SVM: the nested CR3);
    ``virtual_processor_id`` is vpid12, 0 when vmcs12 does not enable VPID.

    Mirrors: arch/x86/kvm/vmx/vmcs12.h: struct vmcs12 (and SVM's cached
    struct vmcb_ctrl_area_cached / vmcb_save_area_cached)
    """
    __slots__ = ("guest_cr0", "guest_cr3", "guest_cr4", "guest_efer", "host_cr0", "host_cr3",
                 "host_cr4", "host_efer", "ept_pointer", "virtual_processor_id")

    def __init__(self, guest: dict, host: dict, ept_pointer: int, vpid: int):
        for k in ("cr0", "cr3", "cr4", "efer"):
            setattr(self, f"guest_{k}", guest[k])
            setattr(self, f"host_{k}", host[k])
        self.ept_pointer = ept_pointer
        self.virtual_processor_id = vpid


class KvmVcpu:
    """struct kvm_vcpu with the parts of struct kvm_vcpu_arch the model needs."""
    __slots__ = ("kvm", "ops", "vcpu_id", "cr0", "cr3", "cr4", "efer", "smm", "guest_mode",
                 "features", "root_mmu", "guest_mmu", "nested_mmu", "mmu", "walk_mmu", "vmcs12",
                 "last_vpid", "smm_guest_mode", "vmxon", "smm_vmxon", "requests", "smram",
                 "smi_pending", "init_latched", "arch_tlbs", "hwtlb", "ept_arch", "checked")

    def __init__(self, kvm, vcpu_id: int):
        self.kvm = kvm
        self.ops = kvm.ops
        self.vcpu_id = vcpu_id
        self.cr0 = 0
        self.cr3 = 0
        self.cr4 = 0
        self.efer = 0
        self.smm = False            # hflags & HF_SMM_MASK
        self.guest_mode = False     # is_guest_mode(): L2 is running (nested-tdp only)
        self.features = ALL_FEATURES
        self.root_mmu = KvmMmu("root_mmu")
        self.guest_mmu = KvmMmu("guest_mmu")
        self.nested_mmu = KvmMmu("nested_mmu")     # L2's walker: roles, never roots
        self.mmu = self.root_mmu
        self.walk_mmu = self.root_mmu
        self.vmcs12 = None          # nested-tdp: L1's VMCS for L2 (Vmcs12)
        self.last_vpid = 0          # vmx->nested.last_vpid
        self.smm_guest_mode = False  # vmx->nested.smm.guest_mode: RSM re-enters L2
        self.vmxon = False          # vmx->nested.vmxon: L1 is in VMX operation (cleared in SMM)
        self.smm_vmxon = False      # vmx->nested.smm.vmxon: VMXON to restore at RSM
        self.requests: dict = {}
        self.smram = None           # the state saved by enter_smm()
        self.smi_pending = False
        self.init_latched = False   # an INIT not yet delivered (in SMM, or VMX root)
        self.arch_tlbs = None       # the architectural checker's state (guest.py):
        self.hwtlb = None           # one ArchTlb per (VPID, EPTP) context, the
        self.ept_arch = None        # hardware TLB, and L2's guest-physical mappings
        self.checked = None         # the checker's last look: (state, violations)

    def pcid(self, cr3: int) -> int:
        """kvm_get_pcid(): the PCID of a CR3 value, 0 while CR4.PCIDE=0."""
        return cr3 & X86_CR3_PCID_MASK if self.cr4 & X86_CR4_PCIDE else 0

    def active_pcid(self) -> int:
        """kvm_get_active_pcid()."""
        return self.pcid(self.cr3)

    def regs(self) -> dict:
        return {"cr0": self.cr0, "cr3": self.cr3, "cr4": self.cr4, "efer": self.efer,
                "smm": self.smm}


def arch_context(vcpu):
    if not vcpu.guest_mode:
        return (0, None)
    return (vcpu.vmcs12.virtual_processor_id, ept_table(vcpu.vmcs12.ept_pointer))


def ept_table(eptp: int) -> int:
    """The frame of the top-level EPT (or NPT) table an EPTP / nCR3 names."""
    return (eptp & ~0xFFF & ((1 << 52) - 1)) >> 12


class StepLog:
    """What happened during one step: the raw material of a step outcome."""
    __slots__ = ("index", "translation", "requests", "freed", "destroyed", "flushes",
                 "root_source", "resets", "allocated", "cache_hits", "hash_hits", "tdp_reuses",
                 "start_root", "start_prev")

    def __init__(self, index: int = 0):
        self.index = index
        self.translation = None     # for an access: the entry used and where from
        self.requests: dict = {}
        self.freed: list = []
        self.destroyed: list = []
        self.flushes: list = []
        self.root_source = "same"
        self.resets = 0
        self.allocated = 0
        self.cache_hits = 0
        self.hash_hits = 0
        self.tdp_reuses = 0         # TDP MMU roots found again (shared or preserved)
        self.start_root = None      # the stepping vCPU's slots when the step began,
        self.start_prev = ()        # to name where a freed root used to be

    def slot_at_start(self, hpa, default: str) -> str:
        if hpa is self.start_root:
            return "current"
        for i, p in enumerate(self.start_prev):
            if p is hpa:
                return f"prev{i}"
        return default

    def raised(self, req):
        self.requests[req] = None


class Kvm:
    """struct kvm with struct kvm_arch: the VM-wide root pools and the vCPUs.

    ``mmu_page_hash`` is the shadow-page hash keyed by (gfn, role word);
    ``tdp_mmu_roots`` is the TDP MMU's root list.  ``ops`` is the era's table
    of mirrored kernel functions; ``trace`` records calls when tracing is on.
    """

    def __init__(self, era, mode: str, vendor: str, trace=None):
        self.era = era
        self.mode = mode
        self.vendor = vendor
        self.tdp_enabled = mode != "shadow"
        self.tdp_mmu_enabled = mode in ("tdp", "nested-tdp")
        self.nested = mode == "nested-tdp"    # L1 runs L2 under EPT/NPT
        self.mmu_page_hash: dict = {}
        self.tdp_mmu_roots: list = []
        self.guest = None           # GuestMemory when the checker is on
        self.ablation_stack: list = []   # (function, condition held) for ablated eras
        self.trace = trace
        self.ops = era.build_ops(trace, vendor)
        self.vcpus: list[KvmVcpu] = []
        self.next_id = 1
        self.step = StepLog()

    def alloc_id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def add_vcpu(self) -> KvmVcpu:
        vcpu = KvmVcpu(self, len(self.vcpus))
        self.vcpus.append(vcpu)
        return vcpu

    def live_roots(self) -> list:
        """Every root page still present in the VM, in id order."""
        pages = [sp for sp in self.mmu_page_hash.values() if not sp.destroyed]
        pages += [sp for sp in self.tdp_mmu_roots if not sp.destroyed]
        return sorted(set(pages), key=lambda sp: sp.id)
