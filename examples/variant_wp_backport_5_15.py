"""01b31714bd90 "KVM: x86: Do not unload MMU roots when only toggling CR0.WP with
TDP enabled" (v6.4) taken back to v5.15, as the 5.10.y/5.15.y stable backports
proposed it: a CR0.WP-only write with TDP re-inits the MMU instead of resetting.

Before v5.19 the TDP root's role still carries the guest's CR0.WP (the
cpu_role/root_role split, e5ed0fb01004, came later), so re-initing keeps a
root built for the old role: `review` reports it as an invariant break.

    python -m mmu_model review --variants examples/variant_wp_backport_5_15.py \
        --era v5.15+01b31714bd90 --mode tdp
"""
from mmu_model import get_era, register_era
from mmu_model.kernel.registers import X86_CR0_PG, X86_CR0_WP


def kvm_post_set_cr0(vcpu, old_cr0, cr0):
    """The backported hunk in front of v5.15's own kvm_post_set_cr0()."""
    if (cr0 ^ old_cr0) == X86_CR0_WP and cr0 & X86_CR0_PG and vcpu.kvm.tdp_enabled:
        vcpu.ops.kvm_init_mmu(vcpu)
        return
    vcpu.ops.parent.kvm_post_set_cr0(vcpu, old_cr0, cr0)


register_era(get_era("v5.15").derive(
    "v5.15+01b31714bd90", "v5.15 with the CR0.WP/TDP no-unload patch backported",
    sources=("01b31714bd90 KVM: x86: Do not unload MMU roots when only toggling CR0.WP "
             "with TDP enabled (v6.4), as backported to stable",),
    kvm_post_set_cr0=kvm_post_set_cr0))
