"""An example variant file: v6.18 without the guest TLB flush on CR4.PCIDE 1->0.

Use it with any command that takes --era:

    python -m mmu_model run scenarios/cr4-pcide-off.json \
        --variants examples/variant_no_pcide_flush.py --era v6.18~no-pcide-flush
"""
from mmu_model import get_era, register_era
from mmu_model.kernel.registers import X86_CR4_PAE, X86_CR4_PGE, X86_CR4_SMEP
from mmu_model.kernel.requests import KVM_REQ, kvm_make_request


def kvm_post_set_cr4(vcpu, old_cr4, cr4):
    """As upstream, but clearing CR4.PCIDE requests no guest TLB flush."""
    changed = cr4 ^ old_cr4
    if changed & vcpu.kvm.era.cr4_role_bits:
        vcpu.ops.kvm_mmu_reset_context(vcpu)
    if changed & X86_CR4_PGE:
        kvm_make_request(KVM_REQ.TLB_FLUSH_GUEST, vcpu)
    elif changed & X86_CR4_PAE or (cr4 & X86_CR4_SMEP and not old_cr4 & X86_CR4_SMEP):
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)


register_era(get_era("v6.18").derive(
    "v6.18~no-pcide-flush", "v6.18 without the guest TLB flush on CR4.PCIDE 1->0",
    kvm_post_set_cr4=kvm_post_set_cr4))
