"""A variant whose kvm_mmu_reset_context raises when the model calls it."""
from mmu_model import get_era, register_era


def kvm_mmu_reset_context(vcpu):
    raise RuntimeError("the reviewer's sketch is unfinished")


register_era(get_era("v6.18").derive("v6.18~raises", "a reset that raises",
                                     kvm_mmu_reset_context=kvm_mmu_reset_context))
