"""LAM v4 7/9 (not merged) on v6.18: a MOV CR3 keeping the address bits only raises
KVM_REQ_LOAD_MMU_PGD, so a PCID switch keeps the old PCID's root. Lore:
https://lore.kernel.org/kvm/20230209024022.3371768-8-robert.hu@linux.intel.com/
Try: compare scenarios/lam-v4-pcid-same-tables.json --era v6.18 --era v6.18+lam-v4-7
"""
from mmu_model import get_era, register_era
from mmu_model.kernel.registers import X86_CR3_PCID_MASK, X86_CR3_PCID_NOFLUSH, X86_CR4_PCIDE
from mmu_model.kernel.requests import KVM_REQ, kvm_make_request

CR3_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF

def kvm_set_cr3(vcpu, cr3):
    """Only a change in CR3_ADDR_MASK calls kvm_mmu_new_pgd()."""
    pcid_on = bool(vcpu.cr4 & X86_CR4_PCIDE)
    new = cr3 & ~X86_CR3_PCID_NOFLUSH if pcid_on else cr3
    if new == vcpu.cr3 or (new ^ vcpu.cr3) & CR3_ADDR_MASK:
        return vcpu.ops.parent.kvm_set_cr3(vcpu, cr3)
    kvm_make_request(KVM_REQ.LOAD_MMU_PGD, vcpu)       # PCID changed: no new pgd
    vcpu.cr3 = new
    if not (pcid_on and cr3 & X86_CR3_PCID_NOFLUSH):
        vcpu.ops.kvm_invalidate_pcid(vcpu, new & X86_CR3_PCID_MASK if pcid_on else 0)
    return 0


register_era(get_era("v6.18").derive(
    "v6.18+lam-v4-7", "v6.18 with LAM v4 7/9's CR3 test (not merged)",
    sources=("<20230209024022.3371768-8-robert.hu@linux.intel.com> [PATCH v4 7/9] KVM: x86: "
             "When guest set CR3, handle LAM bits semantics (not merged)",),
    kvm_set_cr3=kvm_set_cr3))
