"""Each era differs from its predecessor on at least one library scenario, in
the way the kernel history says (docs/kernel-notes.md §2-§5)."""
import subprocess
import sys

import pytest
from conftest import ROOT, run

from mmu_model import Simulation, all_eras, get_era, register_era
from mmu_model.eras import ERAS


def test_v5_15_to_v5_17_pge_no_longer_resets():
    """a91a7c709600 (v5.16): CR4.PGE left the role bits; a toggle only flushes."""
    old, new = run("cr4-pge-toggle", "v5.15", "shadow")[0], run("cr4-pge-toggle", "v5.17", "shadow")[0]
    assert "kvm_mmu_reset_context" in old["calls"] and old["root_source"] == "hash"
    assert new["requests"] == ["KVM_REQ_TLB_FLUSH_GUEST"] and new["root_source"] == "same"


def test_v5_15_guest_flush_unloads_under_shadow():
    """61b05a9fd4ae (v5.16): a guest TLB flush synced instead of unloading."""
    *_, t2, _ = run("invpcid", "v5.15", "shadow")
    assert "kvm_mmu_unload" in t2["calls"] and t2["freed"]
    *_, t2, _ = run("invpcid", "v5.17", "shadow")
    assert "kvm_mmu_unload" not in t2["calls"] and t2["freed"] == []


def test_v5_15_mov_cr3_without_pcid_frees_prev_roots():
    """509bfe3d9796 (v5.16): with PCIDs off, prev roots survive MOV CR3."""
    away, back, _ = run("cr3-no-pcid", "v5.15", "shadow")
    assert [f["slot"] for f in away["freed"]] == ["current"]    # the root it just left
    assert back["root_source"] == "hash"
    away, back, _ = run("cr3-no-pcid", "v5.17", "shadow")
    assert away["freed"] == [] and back["root_source"] == "cache"


def test_v5_17_to_seed_v1_reset_keeps_roots():
    """v1 12/12: the reset looks CR3 up in the cache instead of unloading."""
    _, on = run("cr0-wp-toggle", "seed-v1", "tdp")
    assert on["root_source"] == "cache" and on["freed"] == []
    _, on = run("cr0-wp-toggle", "v5.17", "tdp")
    assert on["root_source"] == "new" and on["destroyed"]


def test_v5_17_to_v5_18_flushes_decoupled():
    """b5f61c035d49: CR0.PG 1->0 requests a guest flush; f6d0a2521ce1: PCIDE
    0->1 unloads only under shadow paging, directly."""
    assert "KVM_REQ_TLB_FLUSH_GUEST" in run("cr0-pg-off-on", "v5.18", "shadow")[0]["requests"]
    assert "KVM_REQ_TLB_FLUSH_GUEST" not in run("cr0-pg-off-on", "v5.17", "shadow")[0]["requests"]
    assert run("cr4-pcide-on", "v5.18", "tdp")[-1]["requests"] == []
    assert run("cr4-pcide-on", "v5.17", "tdp")[-1]["requests"] == ["KVM_REQ_MMU_RELOAD"]


def test_v5_18_to_v5_19_tdp_role_drops_guest_bits():
    """e5ed0fb01004 (v5.19): the TDP root role no longer carries guest EFER.NX."""
    assert run("efer-nx-toggle", "v5.18", "tdp")[0]["root"]["role"]["efer_nx"] is False
    assert run("efer-nx-toggle", "v5.19", "tdp")[0]["root"]["role"]["efer_nx"] is True


def test_v5_19_to_v6_4_wp_and_preserved_roots():
    """01b31714bd90/fb509f76acc8: WP-only writes do not exit with VMX+EPT;
    edbdb43fc96b: after an SMI/RSM the TDP root is preserved, not rebuilt."""
    assert run("cr0-wp-toggle", "v5.19", "tdp")[0]["intercepted"] is True
    assert run("cr0-wp-toggle", "v6.4", "tdp")[0]["intercepted"] is False
    assert run("smi-rsm", "v5.19", "tdp")[-1]["root_source"] == "new"
    assert run("smi-rsm", "v6.4", "tdp")[-1]["root_source"] == "preserved"


def test_v6_4_to_v6_18_set_sregs_flushes():
    """4346db6e6e7a (v6.6): KVM_SET_SREGS with a change also flushes the guest TLB."""
    assert run("set-sregs", "v6.4", "shadow")[0]["requests"] == []
    assert run("set-sregs", "v6.18", "shadow")[0]["requests"] == ["KVM_REQ_TLB_FLUSH_GUEST"]


def test_v5_18_to_seed_v2_defers_the_lookup():
    """v2 16/18 + 18/18: the reset raises KVM_REQ_MMU_UPDATE_ROOT; the lookup
    runs at entry and finds the cached root."""
    off, on = run("cr0-wp-toggle", "seed-v2", "tdp")
    assert "KVM_REQ_MMU_UPDATE_ROOT" in off["requests"]
    assert on["root_source"] == "cache"
    calls = on["calls"]
    assert calls.index("kvm_mmu_update_root") > calls.index("vcpu_enter_guest")


def test_seed_v1_to_review_sketch_smm_still_unloads():
    """The sketch keeps kvm_mmu_reset_context() for SMM: the pre-SMI root is not
    found in the cache after RSM, as it is with v1 (for a guest without PCIDs)."""
    v1 = run("smi-latched", "seed-v1", "shadow")
    sketch = run("smi-latched", "review-sketch", "shadow")
    assert v1[0]["freed"] == [] and sketch[0]["freed"]


def test_seed_v1_rsm_reuses_pre_smi_root_and_v5_17_rebuilds():
    """The review notebook's claim: an SMI/RSM pair reuses the pre-SMI root from
    the cache under seed-v1 (guest without PCIDs), v5.17 rebuilds it."""
    for era, source in (("seed-v1", "cache"), ("v5.17", "new")):
        sim = Simulation(era, "tdp", "vmx", 1, "long-mode")
        sim.apply({"op": "smi"})
        rsm = sim.apply({"op": "rsm"})
        assert rsm["root_source"] == source and (rsm["root"]["id"] == 1) == (source == "cache")


def test_eras_are_listed_in_kernel_order_with_sources():
    names = [e.name for e in all_eras()]
    assert names[:7] == ["v5.15", "v5.17", "seed-v1", "v5.18", "v5.19", "v6.4", "v6.18"]
    for e in all_eras():
        assert e.sources and e.summary and e.kernel
        assert e.merged == (e.name.startswith("v") and "~" not in e.name)
        if not e.merged:
            assert e.inferred, f"{e.name} must say what is inferred"


def test_derive_rejects_unknown_function_names():
    with pytest.raises(ValueError, match="not a mirrored function or an era field: kvm_post_set_cr9"):
        get_era("v6.18").derive("x", "y", kvm_post_set_cr9=lambda *a: None)


def test_a_notebook_style_variant_runs_like_an_era():
    """A reviewer replaces one function in a cell and runs the variant by name."""
    def kvm_mmu_reset_context(vcpu):          # "do not unload": re-init only
        vcpu.kvm.step.resets += 1
        vcpu.ops.kvm_init_mmu(vcpu)
        vcpu.ops.kvm_mmu_new_pgd(vcpu, vcpu.cr3)

    variant = get_era("v6.18").derive("test-no-unload", "v6.18, reset without unload",
                                      kvm_mmu_reset_context=kvm_mmu_reset_context)
    register_era(variant)
    try:
        off, on = Simulation("test-no-unload", "shadow", start="long-mode").run(
            [{"op": "mov_cr0", "clear": 0x10000}, {"op": "mov_cr0", "set": 0x10000}])
        assert on["root_source"] == "cache" and on["freed"] == []
        assert "kvm_mmu_reset_context" in on["calls"]
    finally:
        del ERAS["test-no-unload"]


def test_cli_loads_a_variants_file():
    r = subprocess.run([sys.executable, "-m", "mmu_model", "run", "scenarios/cr4-pcide-off.json",
                        "--variants", "examples/variant_no_pcide_flush.py",
                        "--era", "v6.18~no-pcide-flush", "--json"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert '"era": "v6.18~no-pcide-flush"' in r.stdout
    r = subprocess.run([sys.executable, "-m", "mmu_model", "run", "scenarios/init.json",
                        "--variants", "no-such-file.py"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("--variants no-such-file.py:")


def test_seed_v2_flushing_cr3_loses_the_cached_root():
    """v2 16/18 defers the lookup, so kvm_invalidate_pcid() frees the cached
    root of the new PCID before the lookup runs; v5.18 switches first."""
    *_, merged = run("cr3-flush-to-cached-root", "v5.18", "shadow")
    *_, v2 = run("cr3-flush-to-cached-root", "seed-v2", "shadow")
    assert merged["root_source"] == "cache" and merged["freed"] == []
    assert v2["root_source"] == "hash" and [f["pgd"] for f in v2["freed"]] == ["0x2001"]


def test_derive_takes_an_era_field_so_one_mask_is_one_keyword():
    """d6174299365d (reset on EFER.LME as well as NX) as a variant of v5.17:
    one keyword, and a host write of EFER.LME then resets the MMU."""
    from mmu_model.kernel.registers import EFER_LME, EFER_NX
    base = get_era("v5.17")
    patched = base.derive("v5.17+d6174299365d", "reset on LME|NX",
                          efer_role_bits=EFER_NX | EFER_LME)
    assert patched.efer_role_bits == EFER_NX | EFER_LME and base.efer_role_bits == EFER_NX
    ev = {"op": "wrmsr_efer", "set": ["LME"], "host": True}
    before = Simulation(base, "shadow").apply(ev)
    after = Simulation(patched, "shadow").apply(ev)
    assert "kvm_mmu_reset_context" not in before["calls"]
    assert "kvm_mmu_reset_context" in after["calls"]


def test_an_override_can_call_the_function_it_replaces():
    """vcpu.ops.parent.<name> runs the parent's version; its callees still go
    through the variant's table, and the trace shows the function once."""
    seen = []

    def kvm_set_cr3(vcpu, cr3):
        seen.append(cr3)
        return vcpu.ops.parent.kvm_set_cr3(vcpu, cr3)

    v = get_era("v6.18").derive("v6.18~wrapped", "kvm_set_cr3 wrapped", kvm_set_cr3=kvm_set_cr3)
    got = Simulation(v, "shadow").apply({"op": "mov_cr3", "value": "0x3000"})
    want = Simulation("v6.18", "shadow").apply({"op": "mov_cr3", "value": "0x3000"})
    assert seen == [0x3000]
    assert got["calls"] == want["calls"] and got["calls"].count("kvm_set_cr3") == 1


def test_derive_names_what_it_does_not_know():
    with pytest.raises(ValueError, match="not a mirrored function or an era field: bogus"):
        get_era("v6.18").derive("x", "y", bogus=1)
