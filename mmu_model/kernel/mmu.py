"""Root management: freeing, unloading, resetting, switching and loading roots.

Each function mirrors the kernel function of the same name in
arch/x86/kvm/mmu/mmu.c (or mmu.h), in its v5.18+ shape.  An era that differs
replaces the function in its ops table (see :mod:`mmu_model.eras`).  Calls to
other mirrored functions go through ``kvm.ops`` so the trace sees them.

Simplifications (README, "Model assumptions"): no mmu_lock, no memory
pressure, no obsolete pages (no memslot changes), no MMIO cache, and shadow
pages are never unsync (there is no guest memory to write).
"""
from __future__ import annotations

from .kvm import (
    KVM_MMU_NUM_PREV_ROOTS,
    KVM_MMU_ROOT_CURRENT,
    KVM_MMU_ROOT_INFO_INVALID,
    KVM_MMU_ROOT_PREVIOUS,
    KVM_MMU_ROOTS_ALL,
    PREV_ROOT_FLAGS,
    KvmMmuPage,
    KvmMmuRootInfo,
    KvmPaeRoot,
    root_to_sp,
)
from .registers import EPT_RWX, PAGE_SHIFT, PTE_FRAME, X86_CR4_LA57
from .requests import KVM_REQ, kvm_check_request, kvm_make_request
from .roles import PT32_ROOT_LEVEL, PT32E_ROOT_LEVEL, PT64_ROOT_4LEVEL, role_regs

# ---------------------------------------------------------------------------
# Freeing roots

def _record_freed(kvm, mmu, slot_label, hpa, pgd):
    step = kvm.step
    slot = step.slot_at_start(hpa, slot_label)
    if kvm.nested:          # two contexts hold roots: say whose slot it was
        slot = f"{mmu.name} {slot}"
    step.freed.append({"id": hpa.id, "slot": slot, "pgd": pgd})


def mmu_free_root_page(kvm, sp):
    """Drop one slot's reference to a root page.

    A TDP MMU root goes to kvm_tdp_mmu_put_root(); a shadow page only loses
    a root_count and stays in the hash (it would be zapped only if invalid).
    Mirrors: arch/x86/kvm/mmu/mmu.c: mmu_free_root_page()
    """
    if sp.tdp_mmu_page:
        kvm.ops.kvm_tdp_mmu_put_root(kvm, sp)
    else:
        sp.root_count -= 1


def kvm_mmu_free_roots(kvm, mmu, roots_to_free):
    """Free the selected root slots of ``mmu``; slots become INVALID_PAGE.

    Leaves freed prev slots in place as holes (the array is not compacted);
    the current slot gets pgd 0.  A special (PAE) root drops its four entries.
    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_free_roots() (v5.18+ decides
    "single root or PAE" by whether the root has a shadow page)
    """
    free_active_root = roots_to_free & KVM_MMU_ROOT_CURRENT
    # Before taking mmu_lock, see whether there is any real work.
    prev_roots = mmu.prev_roots
    if not (free_active_root and mmu.root.hpa is not None):
        for i, flag in enumerate(PREV_ROOT_FLAGS):
            if roots_to_free & flag and prev_roots[i].hpa is not None:
                break
        else:
            return
    ops = kvm.ops
    for i, flag in enumerate(PREV_ROOT_FLAGS):
        prev = prev_roots[i]
        if roots_to_free & flag and prev.hpa is not None:
            _record_freed(kvm, mmu, f"prev{i}", prev.hpa, prev.pgd)
            ops.mmu_free_root_page(kvm, prev.hpa)
            mmu.prev_roots[i] = KvmMmuRootInfo(prev.pgd, None)
    if free_active_root:
        hpa = mmu.root.hpa
        if hpa is not None:
            _record_freed(kvm, mmu, "current", hpa, mmu.root.pgd)
            if root_to_sp(hpa) is not None:
                ops.mmu_free_root_page(kvm, hpa)
            else:
                for sp in hpa.entries:
                    if sp is not None:
                        ops.mmu_free_root_page(kvm, sp)
        mmu.root = KVM_MMU_ROOT_INFO_INVALID


def kvm_mmu_unload(vcpu):
    """Free every root slot of root_mmu and of guest_mmu, whichever is active.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_unload()
    """
    kvm = vcpu.kvm
    kvm.ops.kvm_mmu_free_roots(kvm, vcpu.root_mmu, KVM_MMU_ROOTS_ALL)
    kvm.ops.kvm_mmu_free_roots(kvm, vcpu.guest_mmu, KVM_MMU_ROOTS_ALL)


def kvm_mmu_reset_context(vcpu):
    """Unload all roots, then recompute the MMU's roles from the registers.

    Leaves the current root invalid: kvm_mmu_reload() builds or finds one at
    the next VM entry.
    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_reset_context()
    """
    vcpu.kvm.step.resets += 1
    vcpu.ops.kvm_mmu_unload(vcpu)
    vcpu.ops.kvm_init_mmu(vcpu)


# ---------------------------------------------------------------------------
# Roles

def kvm_init_mmu(vcpu):
    """Recompute the active context's roles; never touches roots.  While L2
    runs under nested EPT/NPT only the walker (nested_mmu) is recomputed:
    guest_mmu's role is set by the nested VM-entry code.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_init_mmu()
    """
    if vcpu.walk_mmu is vcpu.nested_mmu:
        vcpu.ops.init_kvm_nested_mmu(vcpu)
    elif vcpu.kvm.tdp_enabled:
        vcpu.ops.init_kvm_tdp_mmu(vcpu)
    else:
        vcpu.ops.init_kvm_softmmu(vcpu)


def _init_context(vcpu, tdp: bool):
    cpu_role, root_role, root_level = vcpu.kvm.era.calc_roles(role_regs(vcpu), tdp)
    mmu = vcpu.root_mmu
    if mmu.cpu_role == cpu_role and mmu.root_role == root_role:
        return          # nothing changed: the init is a no-op
    mmu.cpu_role, mmu.root_role, mmu.root_level = cpu_role, root_role, root_level


def init_kvm_tdp_mmu(vcpu):
    """Set root_mmu's roles for TDP; returns early if they did not change.

    Mirrors: arch/x86/kvm/mmu/mmu.c: init_kvm_tdp_mmu()
    """
    _init_context(vcpu, True)


def init_kvm_softmmu(vcpu):
    """Set root_mmu's roles for shadow paging (kvm_init_shadow_mmu()).

    Mirrors: arch/x86/kvm/mmu/mmu.c: init_kvm_softmmu()
    """
    _init_context(vcpu, False)


# ---------------------------------------------------------------------------
# The prev_roots cache

def is_root_usable(root, pgd, role) -> bool:
    """A slot can serve (pgd, role) if valid, backed by a shadow page of the
    same role word, and (for indirect roles) of the same pgd incl. PCID bits.

    Mirrors: arch/x86/kvm/mmu/mmu.c: is_root_usable()
    """
    sp = root.hpa
    if sp is None:
        return False
    if not role.direct and pgd != root.pgd:
        return False
    if type(sp) is not KvmMmuPage:
        return False
    return sp.role == role


def cached_root_find_and_keep_current(kvm, mmu, new_pgd, new_role) -> bool:
    """Look for a usable root in current, then prev_roots, rotating as it goes.

    The swaps rotate the cache: C 0 1 2 -> 0 C 1 2 -> 1 C 0 2 -> 2 C 0 1.
    On a miss the LRU root ends up current and is freed; the root stays
    invalid for kvm_mmu_reload() to fill.
    Mirrors: arch/x86/kvm/mmu/mmu.c: cached_root_find_and_keep_current() (v5.18+)
    """
    usable = kvm.ops.is_root_usable
    if usable(mmu.root, new_pgd, new_role):
        return True
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        mmu.root, mmu.prev_roots[i] = mmu.prev_roots[i], mmu.root
        if usable(mmu.root, new_pgd, new_role):
            kvm.step.cache_hits += 1
            kvm.step.root_source = "cache"
            return True
    kvm.ops.kvm_mmu_free_roots(kvm, mmu, KVM_MMU_ROOT_CURRENT)
    return False


def cached_root_find_without_current(kvm, mmu, new_pgd, new_role) -> bool:
    """With no current root, take a usable prev root and bubble the rest up.

    On a hit the last prev slot becomes INVALID_PAGE; on a miss nothing moves.
    Mirrors: arch/x86/kvm/mmu/mmu.c: cached_root_find_without_current() (v5.18+)
    """
    usable = kvm.ops.is_root_usable
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        if usable(mmu.prev_roots[i], new_pgd, new_role):
            break
    else:
        return False
    mmu.root, mmu.prev_roots[i] = mmu.prev_roots[i], mmu.root
    for j in range(i, KVM_MMU_NUM_PREV_ROOTS - 1):
        mmu.prev_roots[j] = mmu.prev_roots[j + 1]
    last = mmu.prev_roots[KVM_MMU_NUM_PREV_ROOTS - 1]
    mmu.prev_roots[KVM_MMU_NUM_PREV_ROOTS - 1] = KvmMmuRootInfo(last.pgd, None)
    kvm.step.cache_hits += 1
    kvm.step.root_source = "cache"
    return True


def fast_pgd_switch(kvm, mmu, new_pgd, new_role) -> bool:
    """Try to switch to (new_pgd, new_role) using cached roots only.

    A current special (PAE) root is freed first, so a 32-bit to 64-bit switch
    can still hit the cache.
    Mirrors: arch/x86/kvm/mmu/mmu.c: fast_pgd_switch() (v5.18+)
    """
    if mmu.root.hpa is not None and root_to_sp(mmu.root.hpa) is None:
        kvm.ops.kvm_mmu_free_roots(kvm, mmu, KVM_MMU_ROOT_CURRENT)
    if mmu.root.hpa is not None:
        return kvm.ops.cached_root_find_and_keep_current(kvm, mmu, new_pgd, new_role)
    return kvm.ops.cached_root_find_without_current(kvm, mmu, new_pgd, new_role)


def kvm_mmu_new_pgd(vcpu, new_pgd):
    """Switch the active MMU to ``new_pgd`` with its current root role.

    On a cache hit, requests KVM_REQ_LOAD_MMU_PGD (no sync, no flush); on a
    miss returns with the root invalid and kvm_mmu_reload() builds one.
    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_new_pgd() (v5.18+)
    """
    mmu = vcpu.mmu
    if not vcpu.ops.fast_pgd_switch(vcpu.kvm, mmu, new_pgd, mmu.root_role):
        return
    kvm_make_request(KVM_REQ.LOAD_MMU_PGD, vcpu)
    if vcpu.kvm.era.force_flush_and_sync_on_reuse:
        kvm_make_request(KVM_REQ.MMU_SYNC, vcpu)
        kvm_make_request(KVM_REQ.TLB_FLUSH_CURRENT, vcpu)


# ---------------------------------------------------------------------------
# Loading roots

def mmu_alloc_root(vcpu, gfn, quadrant, level) -> KvmMmuPage:
    """Find or create the shadow page for (gfn, root role at ``level``), +1 root_count.

    Mirrors: arch/x86/kvm/mmu/mmu.c: mmu_alloc_root()
    """
    role = vcpu.mmu.root_role
    if role.level != level or role.quadrant != quadrant:
        role = role.replace(level=level, quadrant=quadrant)
    if role.direct and role.has_4_byte_gpte:
        # Direct pages never have 4-byte gptes (kvm_mmu_get_page() up to v5.19
        # forced it; only v5.15's paging-off shadow root role has it set).
        role = role.replace(has_4_byte_gpte=False)
    sp = vcpu.ops.kvm_mmu_get_shadow_page(vcpu, gfn, role)
    sp.root_count += 1
    return sp


def kvm_mmu_get_shadow_page(vcpu, gfn, role) -> KvmMmuPage:
    """Look (gfn, role) up in the VM-wide shadow-page hash, creating it if absent.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_get_shadow_page() (kvm_mmu_get_page() before v6.0)
    """
    kvm = vcpu.kvm
    key = (gfn, role.word)
    sp = kvm.mmu_page_hash.get(key)
    if sp is not None:
        vcpu.kvm.step.hash_hits += 1
        return sp
    sp = KvmMmuPage(kvm.alloc_id(), gfn, role)
    kvm.mmu_page_hash[key] = sp
    kvm.step.allocated += 1
    return sp


def mmu_alloc_direct_roots(vcpu):
    """Build the root of a direct MMU: a TDP MMU root, a legacy direct root, or
    (paging off under shadow paging) four direct PAE roots.

    Mirrors: arch/x86/kvm/mmu/mmu.c: mmu_alloc_direct_roots()
    """
    kvm, mmu, ops = vcpu.kvm, vcpu.mmu, vcpu.ops
    level = mmu.root_role.level
    if kvm.tdp_mmu_enabled:
        sp = ops.kvm_tdp_mmu_alloc_root(vcpu)
        mmu.root = KvmMmuRootInfo(0, sp)
    elif level >= PT64_ROOT_4LEVEL:
        before = kvm.step.allocated
        sp = ops.mmu_alloc_root(vcpu, 0, 0, level)
        kvm.step.root_source = "new" if kvm.step.allocated > before else "hash"
        mmu.root = KvmMmuRootInfo(0, sp)
    else:
        entries = [ops.mmu_alloc_root(vcpu, i << (30 - PAGE_SHIFT), 0, PT32_ROOT_LEVEL)
                   for i in range(4)]
        mmu.root = KvmMmuRootInfo(0, KvmPaeRoot(kvm.alloc_id(), entries, mmu.root_role))
        kvm.step.root_source = "special"


def pdpte_gfn(cr3: int, i: int) -> int:
    """The page-directory gfn that PAE PDPTE ``i`` of address space ``cr3`` holds.

    Simplification: there is no guest memory, so each PAE CR3 value stands for
    a page-directory-pointer table whose four entries are present and point at
    distinct tables derived from the CR3 value.
    """
    return 0x100000 + ((cr3 >> 5) << 2) + i


def kvm_mmu_get_guest_pgd(vcpu, mmu) -> int:
    """The pgd a context's roots shadow: the EPTP / nCR3 for guest_mmu, CR3 otherwise.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_get_guest_pgd() (v6.x; the
    ``get_guest_pgd`` callbacks nested_ept_get_eptp() / nested_svm_get_tdp_cr3())
    """
    if mmu is vcpu.guest_mmu:
        return vcpu.vmcs12.ept_pointer
    return vcpu.cr3


def mmu_alloc_shadow_roots(vcpu):
    """Build the root of a shadow MMU for the guest's CR3.

    A 64-bit guest gets one root via the hash; a 32-bit or PAE guest gets a
    special pae_root whose four entries come from the hash (PAE: one per
    PDPTE; 2-level: one per quadrant of the guest's page directory).
    Mirrors: arch/x86/kvm/mmu/mmu.c: mmu_alloc_shadow_roots()
    """
    kvm, mmu, ops = vcpu.kvm, vcpu.mmu, vcpu.ops
    root_pgd = kvm_mmu_get_guest_pgd(vcpu, mmu)
    root_gfn = (root_pgd & PTE_FRAME) >> PAGE_SHIFT
    if mmu.root_level >= PT64_ROOT_4LEVEL:
        before = kvm.step.allocated
        sp = ops.mmu_alloc_root(vcpu, root_gfn, 0, mmu.root_role.level)
        # The checker's view of what it shadows: L2's tables under L1's EPT/NPT
        # (a tuple, so it never equals a CR3 frame) or the guest's own.
        sp.space = ("ept", root_gfn) if mmu is vcpu.guest_mmu else root_gfn
        kvm.step.root_source = "new" if kvm.step.allocated > before else "hash"
        mmu.root = KvmMmuRootInfo(root_pgd, sp)
        return
    entries = []
    for i in range(4):
        if mmu.root_level == PT32E_ROOT_LEVEL:
            gfn, quadrant = mmu.pdptrs[i] >> PAGE_SHIFT, 0
        else:
            gfn, quadrant = root_gfn, i
        sp = ops.mmu_alloc_root(vcpu, gfn, quadrant, PT32_ROOT_LEVEL)
        sp.space = root_gfn
        entries.append(sp)
    mmu.root = KvmMmuRootInfo(root_pgd, KvmPaeRoot(kvm.alloc_id(), entries, mmu.root_role))
    kvm.step.root_source = "special"


def root_pages(hpa) -> list:
    """The shadow pages a root reaches: itself, or a special root's entries."""
    if hpa is None:
        return []
    if type(hpa) is KvmMmuPage:
        return [hpa]
    return [e for e in hpa.entries if e is not None]


def page_for_addr(hpa, addr):
    """The root page whose range covers ``addr`` (a special root: by PDPTE)."""
    if type(hpa) is KvmMmuPage:
        return hpa
    return hpa.entries[(addr >> 30) & 3] if hpa is not None else None


def sync_page(kvm, sp, addrs=None) -> None:
    """Bring ``sp``'s unsync translations (or just ``addrs``) back in line with
    the guest's tables (the model's kvm_sync_page()/kvm_sync_spte())."""
    guest = kvm.guest
    if guest is None or sp is None or sp.space is None or not sp.unsync_addrs:
        return
    todo = list(sp.unsync_addrs) if addrs is None else [a for a in addrs if a in sp.unsync_addrs]
    ept = type(sp.space) is tuple
    for addr in todo:
        value = guest.ept_read(sp.space[1], addr) if ept else guest.read(sp.space, addr)
        if value is not None and value & (EPT_RWX if ept else 1):
            sp.sptes[addr] = value
        else:
            sp.sptes.pop(addr, None)
        sp.unsync_addrs.discard(addr)


def kvm_mmu_sync_roots(vcpu):
    """Sync the unsync children of the current shadow root (or of each valid
    PAE entry); nothing for direct roots.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_sync_roots()
    """
    mmu = vcpu.mmu
    if mmu.root_role.direct or mmu.root.hpa is None:
        return
    for sp in root_pages(mmu.root.hpa):
        sync_page(vcpu.kvm, sp)


def kvm_mmu_sync_prev_roots(vcpu):
    """Free every previous root that has unsync children (none in this model).

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_sync_prev_roots()
    """
    mmu = vcpu.mmu
    roots_to_free = 0
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        sp = root_to_sp(mmu.prev_roots[i].hpa)
        if sp is not None and sp.unsync:
            roots_to_free |= KVM_MMU_ROOT_PREVIOUS(i)
    vcpu.ops.kvm_mmu_free_roots(vcpu.kvm, mmu, roots_to_free)


def kvm_mmu_load_pgd(vcpu):
    """Program the current root into hardware (EPTP, CR3 or nCR3); no flush.

    Mirrors: arch/x86/kvm/mmu.h: kvm_mmu_load_pgd()
    """
    return None


def kvm_mmu_load(vcpu):
    """Build or find a root for the current pgd and role, then flush it.

    Always ends with the vendor's flush_tlb_current: "the provenance of the
    root is unknown".
    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_load()
    """
    ops = vcpu.ops
    if vcpu.mmu.root_role.direct:
        ops.mmu_alloc_direct_roots(vcpu)
    else:
        ops.mmu_alloc_shadow_roots(vcpu)
    ops.kvm_mmu_sync_roots(vcpu)
    ops.kvm_mmu_load_pgd(vcpu)
    ops.flush_tlb_current(vcpu)


def kvm_mmu_reload(vcpu):
    """Load a root if the current one is invalid; otherwise nothing.

    Mirrors: arch/x86/kvm/mmu.h: kvm_mmu_reload() (v6.x also frees obsolete roots first)
    """
    if kvm_check_request(KVM_REQ.MMU_FREE_OBSOLETE_ROOTS, vcpu):
        vcpu.ops.kvm_mmu_free_obsolete_roots(vcpu)
    if vcpu.mmu.root.hpa is not None:
        return
    vcpu.ops.kvm_mmu_load(vcpu)


def kvm_mmu_free_obsolete_roots(vcpu):
    """Free roots made obsolete by a memslot change (never, in this model).

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_free_obsolete_roots() (v5.18+)
    """
    return None


# ---------------------------------------------------------------------------
# INVLPG and INVPCID(individual address)

def is_noncanonical_address(vcpu, gva) -> bool:
    """Whether ``gva`` is not canonical for the vCPU's linear-address width.

    Mirrors: arch/x86/kvm/x86.h: is_noncanonical_address() (v6.12+:
    is_noncanonical_invlpg_address() for INVLPG/INVPCID)
    """
    bits = 57 if vcpu.cr4 & X86_CR4_LA57 else 48
    top = gva >> (bits - 1)
    return top not in (0, (1 << (64 - bits + 1)) - 1)


def kvm_mmu_invalidate_addr(vcpu, mmu, addr, roots):
    """Flush ``addr`` from the hardware TLB and zap it in the selected shadow roots.

    A non-canonical address is a no-op.  Direct MMUs have no sync_spte hook,
    so only the hardware flush happens there.
    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_invalidate_addr() (v6.4+;
    kvm_mmu_invalidate_gva() before)
    """
    if vcpu.ops.is_noncanonical_address(vcpu, addr):
        return
    vcpu.ops.flush_tlb_gva(vcpu, addr)
    if mmu.root_role.direct:
        return
    slots = ([mmu.root] if roots & KVM_MMU_ROOT_CURRENT else []) + [
        mmu.prev_roots[i] for i in range(KVM_MMU_NUM_PREV_ROOTS) if roots & KVM_MMU_ROOT_PREVIOUS(i)]
    for info in slots:
        sync_page(vcpu.kvm, page_for_addr(info.hpa, addr), [addr])


def kvm_mmu_invlpg(vcpu, gva):
    """INVLPG: invalidate ``gva`` in the current and every previous root.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_invlpg()
    """
    vcpu.ops.kvm_mmu_invalidate_addr(vcpu, vcpu.walk_mmu, gva, KVM_MMU_ROOTS_ALL)


def kvm_mmu_invpcid_gva(vcpu, gva, pcid):
    """INVPCID type 0: invalidate ``gva`` in the roots tagged with ``pcid``.

    Mirrors: arch/x86/kvm/mmu/mmu.c: kvm_mmu_invpcid_gva()
    """
    mmu = vcpu.mmu
    roots = 0
    if pcid == vcpu.active_pcid():
        roots |= KVM_MMU_ROOT_CURRENT
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        prev = mmu.prev_roots[i]
        if prev.hpa is not None and pcid == vcpu.pcid(prev.pgd):
            roots |= KVM_MMU_ROOT_PREVIOUS(i)
    if roots:
        vcpu.ops.kvm_mmu_invalidate_addr(vcpu, mmu, gva, roots)

