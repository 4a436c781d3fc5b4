"""A variant whose kvm_mmu_reset_context recurses for ever."""
from mmu_model import get_era, register_era


def kvm_mmu_reset_context(vcpu):
    return kvm_mmu_reset_context(vcpu)


register_era(get_era("v6.18").derive("v6.18~recurses", "a reset that never returns",
                                     kvm_mmu_reset_context=kvm_mmu_reset_context))
