"""The mirrored kernel: KVM's x86 MMU-root code, one Python function per kernel
function, under the kernel's name and argument order, in its v6.18 shape (the
eras replace what differs).

* ``registers`` - CR0/CR3/CR4/EFER bits and CPUID features (processor-flags.h);
* ``roles`` - union kvm_mmu_page_role, kvm_cpu_role and their calc functions;
* ``kvm`` - struct kvm, kvm_vcpu, kvm_mmu, kvm_mmu_page, kvm_mmu_root_info;
* ``requests`` - KVM_REQ_* and kvm_make_request()/kvm_check_request();
* ``mmu``, ``tdp_mmu`` - arch/x86/kvm/mmu/: roots, prev_roots, the hash;
* ``x86``, ``smm`` - arch/x86/kvm/x86.c, smm.c: register writes, entry, SMM;
* ``nested`` - vmx/nested.c and svm/nested.c as far as roots care;
* ``vendor`` - vmx.c / svm.c hooks (exits, hardware flushes);
* ``trace`` - the call trace (data owned by the VM, not a global).

May import: only its own modules.  Never the eras (a VM reaches its era's
functions through ``vcpu.ops``), the architecture's side (the checker), the
harness or any UI library.
"""
