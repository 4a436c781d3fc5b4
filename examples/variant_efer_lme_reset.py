"""d6174299365d "KVM: x86: Reinitialize context if host userspace toggles EFER.LME"
(Feb 2022, Cc stable) as a variant of v5.17: set_efer() resets the MMU when
EFER.LME changes, not only EFER.NX.  The patch is one mask, so the variant is
one keyword (an era field).

    python -m mmu_model review --variants examples/variant_efer_lme_reset.py \
        --era v5.17+d6174299365d
    python -m mmu_model compare scenarios/efer-lme-host.json \
        --variants examples/variant_efer_lme_reset.py --era v5.17 --era v5.17+d6174299365d
"""
from mmu_model import get_era, register_era
from mmu_model.kernel.registers import EFER_LME, EFER_NX

register_era(get_era("v5.17").derive(
    "v5.17+d6174299365d", "v5.17 with set_efer() resetting the MMU on EFER.LME|NX changes",
    sources=("d6174299365d KVM: x86: Reinitialize context if host userspace toggles EFER.LME",),
    efer_role_bits=EFER_NX | EFER_LME))
