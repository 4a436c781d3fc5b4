"""Eras: pinned kernel behaviours, as data plus the few functions that differ.

An :class:`Era` holds the role-bit masks, the role formulas and a table of
the mirrored kernel functions.  The core modules implement the v6.18 shape
of every function; an era lists only what it replaces (``overrides``) and
the names its source uses where they differ (``names``), so its trace reads
like that kernel.  A variant is an era derived from another with some
functions replaced (:meth:`Era.derive`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from types import SimpleNamespace
from typing import Callable, Optional

from ..kernel import mmu, nested, smm, tdp_mmu, vendor, x86
from ..kernel.trace import traced

# Every mirrored function, by the name the core calls it with.
CORE_FUNCTIONS: dict[str, Callable] = {}
for _module, _names in [
    (mmu, "mmu_free_root_page kvm_mmu_free_roots kvm_mmu_unload kvm_mmu_reset_context "
          "kvm_init_mmu init_kvm_tdp_mmu init_kvm_softmmu is_root_usable "
          "cached_root_find_and_keep_current cached_root_find_without_current fast_pgd_switch "
          "kvm_mmu_new_pgd mmu_alloc_root kvm_mmu_get_shadow_page mmu_alloc_direct_roots "
          "mmu_alloc_shadow_roots kvm_mmu_sync_roots kvm_mmu_sync_prev_roots kvm_mmu_load_pgd "
          "kvm_mmu_load kvm_mmu_reload kvm_mmu_free_obsolete_roots kvm_mmu_invalidate_addr "
          "kvm_mmu_invlpg kvm_mmu_invpcid_gva is_noncanonical_address"),
    (tdp_mmu, "kvm_tdp_mmu_alloc_root kvm_tdp_mmu_put_root"),
    (x86, "load_pdptrs kvm_set_cr0 kvm_post_set_cr0 kvm_set_cr4 kvm_post_set_cr4 kvm_set_cr3 "
          "kvm_vcpu_is_legal_cr3 kvm_invalidate_pcid kvm_handle_invpcid set_efer __set_sregs kvm_vcpu_reset "
          "__apic_accept_irq kvm_apic_accept_events kvm_vcpu_flush_tlb_current kvm_vcpu_flush_tlb_guest "
          "kvm_vcpu_flush_tlb_all kvm_service_local_tlb_flush_requests "
          "kvm_check_and_inject_events vcpu_enter_guest"),
    (smm, "kvm_inject_smi process_smi kvm_smm_changed enter_smm em_rsm emulator_leave_smm "
          "rsm_load_state_64 rsm_enter_protected_mode"),
    (nested, "kvm_init_shadow_ept_mmu kvm_init_shadow_npt_mmu init_kvm_nested_mmu "
             "nested_ept_init_mmu_context nested_ept_uninit_mmu_context nested_vmx_load_cr3 "
             "nested_vmx_transition_tlb_flush nested_vmx_enter_non_root_mode nested_vmx_vmexit "
             "load_vmcs12_host_state handle_invept handle_invvpid vpid_sync_context "
             "vpid_sync_vcpu_addr vendor_enter_smm vendor_leave_smm"),
]:
    for _name in _names.split():
        CORE_FUNCTIONS[_name] = getattr(_module, _name)
CORE_FUNCTIONS.update(vendor.VENDOR_FUNCTIONS)

# Functions the trace leaves out: predicates called in loops add lines, not insight.
# A variant that replaces one is traced (build_ops): the replacement is the news.
UNTRACED = frozenset({"is_root_usable", "kvm_vcpu_is_legal_cr3", "is_noncanonical_address"})


@dataclass(frozen=True)
class Era:
    """One kernel behaviour that scenarios can be run under."""
    name: str
    kernel: str                       # the kernel range, e.g. "v6.4 .. v6.18"
    summary: str                      # one line: what characterises it
    sources: tuple                    # commits and Message-IDs that define it
    calc_roles: Callable              # (RoleRegs, tdp) -> (cpu_role, root_role, root_level)
    page_role_fields: tuple
    cpu_role_name: str                # "mmu_role" (before v5.19) or "cpu_role"
    cr0_role_bits: int
    cr4_role_bits: int
    efer_role_bits: int
    cr0_guest_owned_with_ept: int     # CR0 bits VMX lets the guest own with EPT (besides TS)
    has_mmu_reload: bool              # KVM_REQ_MMU_RELOAD exists (up to v5.17)
    tdp_mmu_owns_roots: bool          # v6.4+: the TDP MMU holds its own root reference
    sregs_flush_guest: bool           # v6.6+: KVM_SET_SREGS also flushes the guest TLB
    reset_flushes_on_pg: bool         # v5.18+: INIT with CR0.PG=1 flushes before the reset
    inferred: Optional[str] = None    # what is inferred rather than read in a kernel tree
    nested_inferred: Optional[str] = None   # the same, for what it does under nested-tdp
    merged: bool = True               # False for posted-but-never-merged patches
    entry_requests: tuple = ()        # extra (KVM_REQ, core name) serviced first at VM entry
    reload_clears: tuple = ()         # requests that KVM_REQ_MMU_RELOAD's unload makes moot
    force_flush_and_sync_on_reuse: bool = False   # the mmu.c module parameter (default off)
    op_wrapper: Optional[Callable] = None    # ablation: wraps every mirrored function
    suppress_request: Optional[tuple] = None  # ablation: (function, KVM_REQ name) to skip
    parent: Optional[str] = None      # for variants: the era they start from
    overrides: dict = field(default_factory=dict)   # core name -> replacement function
    names: dict = field(default_factory=dict)       # [vendor:]core name -> this kernel's name (None: inlined)
    parent_functions: dict = field(default_factory=dict)  # variants: the parent's table (ops.parent)

    def kernel_name(self, core_name: str, vendor_name: str = "vmx") -> Optional[str]:
        if f"{vendor_name}:{core_name}" in self.names:
            return self.names[f"{vendor_name}:{core_name}"]
        if core_name in self.names:
            return self.names[core_name]
        return vendor.VENDOR_NAMES[vendor_name].get(core_name, core_name)

    def build_ops(self, trace=None, vendor_name: str = "vmx") -> SimpleNamespace:
        """The table of mirrored functions a VM of this era calls through."""
        ops = SimpleNamespace()
        for core_name, fn in {**CORE_FUNCTIONS, **self.overrides}.items():
            name = self.kernel_name(core_name, vendor_name)
            if (trace is not None and name is not None
                    and (core_name not in UNTRACED or core_name in self.overrides)):
                fn = traced(trace, name, fn)
            if self.op_wrapper is not None:
                fn = self.op_wrapper(core_name, fn)
            setattr(ops, core_name, fn)
        if self.parent_functions:
            # An override may call the function it replaces: vcpu.ops.parent.<name>
            # runs the parent era's version (untraced: the override's own entry is
            # in the trace), whose callees go through this era's table.
            ops.parent = SimpleNamespace(**self.parent_functions)
        return ops

    def derive(self, name: str, summary: str, *, kernel: Optional[str] = None,
               sources: tuple = (), inferred: Optional[str] = None,
               helpers: Optional[dict] = None, **changes) -> "Era":
        """A variant: this era with some mirrored functions or data fields replaced.

        Keyword arguments are mirrored functions by their core name
        (``kvm_post_set_cr4``, ``kvm_mmu_reset_context``, ...), each taking the
        kernel function's arguments, or the era's data fields (``efer_role_bits``,
        ``cr4_role_bits``, ``sregs_flush_guest``, ...), so a patch that changes one
        mask is one keyword.  An override reaches the function it replaces as
        ``vcpu.ops.parent.<name>``.  ``helpers`` adds functions of the variant's
        own (reached as ``vcpu.ops.<name>`` and traced under that name).
        Register the result with :func:`register_era` to use it by name, e.g.
        from the command line's ``--era``.
        """
        data = {f.name for f in fields(Era)} - DERIVE_FIXED
        functions = {k: v for k, v in changes.items() if k not in data}
        known = set(CORE_FUNCTIONS) | set(self.overrides)
        unknown = sorted(set(functions) - known)
        if unknown:
            raise ValueError(f"not a mirrored function or an era field: {', '.join(unknown)} "
                             f"(functions: {', '.join(sorted(known))}; fields: "
                             f"{', '.join(sorted(data))}; pass new functions as helpers=)")
        fields_ = {k: v for k, v in changes.items() if k in data}
        return replace(self, name=name, summary=summary, parent=self.name, merged=False,
                       kernel=kernel or f"{self.kernel} + variant",
                       sources=sources or self.sources,
                       inferred=inferred if inferred is not None else self.inferred,
                       overrides={**self.overrides, **(helpers or {}), **functions},
                       parent_functions={**CORE_FUNCTIONS, **self.overrides}, **fields_)


# Era fields that derive() sets itself or that describe the record, not the kernel.
DERIVE_FIXED = {"name", "summary", "kernel", "sources", "inferred", "parent", "merged",
                "overrides", "names", "parent_functions", "op_wrapper", "suppress_request"}


def with_flush_on_reuse(era: Era) -> Era:
    """``era`` run with kvm.ko's ``force_flush_and_sync_on_reuse=1``: a root
    reused from prev_roots is synced and flushed like a new one."""
    if era.force_flush_and_sync_on_reuse:
        return era
    return replace(era, name=f"{era.name}+flush-on-reuse", force_flush_and_sync_on_reuse=True,
                   summary=f"{era.name} with force_flush_and_sync_on_reuse=1")
