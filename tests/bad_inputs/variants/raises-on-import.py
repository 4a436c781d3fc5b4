"""A variants file that fails while it is loaded."""
from mmu_model import get_era

get_era("v6.18").derive("v6.18~broken", "never registered", nonexistent_function=lambda vcpu: None)
