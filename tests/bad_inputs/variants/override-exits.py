"""A variant whose kvm_mmu_reset_context calls sys.exit when the model calls it."""
import sys

from mmu_model import get_era, register_era


def kvm_mmu_reset_context(vcpu):
    sys.exit(0)


register_era(get_era("v6.18").derive("v6.18~exits", "a reset that exits",
                                     kvm_mmu_reset_context=kvm_mmu_reset_context))
