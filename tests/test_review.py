"""The review helpers (mmu_model/review.py) and the claims notebook 07 checks."""
import pytest

from mmu_model import get_era, register_era
from mmu_model.classroom.review import (
    MESSAGES,
    Table,
    ablation_rows,
    cycles_chart_data,
    describe_event,
    describe_step,
    history,
    library_diff,
    library_scenario,
    lore,
    make_scenario,
    replay,
    root_roles,
    search,
    side_by_side,
    thread,
)
from mmu_model.harness.scenario import parse_event

SMM = [{"op": "mov_cr3", "value": "0x2000"}, {"op": "smi"}, {"op": "rsm"}]


def step(table, era, i):
    return table.data[era]["steps"][i]


def test_lore_links_every_message():
    """Each message key and each raw Message-ID gives its lore address."""
    assert lore("seed") == "https://lore.kernel.org/kvm/29e1edc7-9f9f-0663-997f-3416269b6a89@redhat.com/"
    assert lore("<YgqsU8j80M1ZpWPx@google.com>") == "https://lore.kernel.org/kvm/YgqsU8j80M1ZpWPx@google.com/"
    links = [c[2][1] for c in thread().rows]
    assert len(links) == len(MESSAGES) and all(u.startswith("https://lore.kernel.org/kvm/") for u in links)


def test_table_renders_text_and_html():
    """A table prints aligned text and escapes its HTML; links become anchors."""
    t = Table(["a", "b"], [["<x>", ("site", "https://example.org/")]], "cap")
    assert str(t).splitlines()[0] == "cap" and "<x>" in str(t)
    html = t._repr_html_()
    assert "&lt;x&gt;" in html and '<a href="https://example.org/">site</a>' in html


def test_describe_event_and_step_in_words():
    """Events and outcomes read as words, with the no-flush bit, frames and repeated flushes."""
    ev = parse_event({"op": "mov_cr3", "value": "0x8000000000002001"}, "e", 1)
    assert describe_event(ev) == "MOV CR3 0x2001, no-flush"
    ev = parse_event({"op": "write_pte", "cr3": "0x1000", "addr": "0x401000", "value": "0x7000006"},
                     "e", 1)
    assert describe_event(ev).endswith("-> not present")
    s = step(side_by_side(library_scenario("smi-rsm"), ["v5.17"]), "v5.17", 2)
    assert describe_step(s).startswith("found again in the hash (#2)") and "current ×2" in describe_step(s)


def test_smi_rsm_without_pcids_reuses_the_cached_root_under_seed_v1():
    """Claim 1: seed-v1's RSM takes the pre-SMI root from prev_roots; v5.17 rebuilds it."""
    smm = make_scenario("smm", "long-mode", SMM)
    shadow = side_by_side(smm, ["v5.17", "seed-v1"], mode="shadow")
    assert step(shadow, "seed-v1", 2)["root_source"] == "cache"
    assert step(shadow, "seed-v1", 2)["root"]["id"] == step(shadow, "seed-v1", 0)["root"]["id"]
    assert step(shadow, "v5.17", 2)["root_source"] == "hash"
    tdp = side_by_side(smm, ["v5.17", "seed-v1"], mode="tdp")
    assert step(tdp, "seed-v1", 2)["root_source"] == "cache" and step(tdp, "v5.17", 2)["destroyed"]


def test_set_sregs_turning_pcids_on_no_longer_unloads_under_seed_v1():
    """Claim 1: KVM_SET_SREGS setting CR4.PCIDE frees the root in v5.17, not in seed-v1."""
    t = side_by_side(library_scenario("set-sregs"), ["v5.17", "seed-v1"], mode="shadow")
    assert step(t, "v5.17", 2)["freed"] and step(t, "seed-v1", 2)["root_source"] == "same"
    assert not step(t, "seed-v1", 2)["tlb_flushes"]


def test_seed_v1_cache_lookup_goes_stale_under_shadow_only():
    """Claim 1: the checker finds a shadow-only violation in seed-v1 that v5.17 does not show."""
    t = search("seed-v1", modes=("shadow", "tdp"), baseline="v5.17", examples=1000)
    assert t.data["shadow"] is not None and t.data["tdp"] is None
    replayed = replay(t.data["shadow"], ["seed-v1", "v5.17"]).data
    assert any(s["violations"] for s in replayed["seed-v1"]["steps"])
    assert not any(s["violations"] for s in replayed["v5.17"]["steps"])


def test_cr0_pg_unload_versus_flush():
    """Claim 2: seed-v1 destroys the TDP root on CR0.PG 1->0; the sketch flushes and keeps it."""
    t = side_by_side(library_scenario("cr0-pg-off-on"), ["seed-v1", "review-sketch"], mode="tdp")
    assert step(t, "seed-v1", 0)["destroyed"] and not step(t, "review-sketch", 0)["destroyed"]
    assert "guest" in step(t, "review-sketch", 0)["tlb_flushes"]
    assert step(t, "review-sketch", 1)["root_source"] == "cache"


def test_ablation_rows_name_each_decision_once():
    """The ablation table shows a decision's label on its first row only, and a verdict per mode."""
    t = ablation_rows("seed-v1", ["cr4-smep-flush"], modes=("shadow", "tdp"), examples=300)
    assert t.rows[0][0].startswith("kvm_post_set_cr4()") and t.rows[1][0] == ""
    assert t.data[("cr4-smep-flush", "shadow")] and t.rows[0][2] == "NEEDED"


def test_pcide_unload_needed_only_under_shadow_paging():
    """Claim 3: without the PCIDE 0->1 unload, shadow paging goes stale and TDP does not."""
    t = search("v6.18~no-pcide-unload", baseline="v6.18", examples=2000)
    assert t.data["shadow"] is not None
    assert t.data["tdp"] is None and t.data["tdp-legacy"] is None
    replayed = replay(t.data["shadow"], ["v6.18~no-pcide-unload", "v6.18"]).data
    assert not any(s["violations"] for s in replayed["v6.18"]["steps"])


def test_tdp_root_role_ignores_cr0_wp_from_v5_19():
    """Claim 4: the TDP root role changes with CR0.WP up to seed-v1, not from v5.19."""
    t = root_roles(["v5.17", "seed-v1", "v5.19", "v6.4"], [{"op": "mov_cr0", "clear": ["WP"]}])
    assert t.data == {"v5.17": True, "seed-v1": True, "v5.19": False, "v6.4": False}
    assert t.rows[0][0] == "cr0_wp"


def test_update_root_request_loses_the_cached_root():
    """Claim 5: seed-v2's deferred lookup misses a root its own PCID flush freed."""
    t = side_by_side(library_scenario("cr3-flush-to-cached-root"), ["seed-v1", "seed-v2"])
    assert step(t, "seed-v1", 2)["root_source"] == "cache"
    assert step(t, "seed-v2", 2)["root_source"] == "hash"
    assert "kvm_mmu_update_root" in step(t, "seed-v2", 2)["calls"]


def test_history_matches_vmexit_flat():
    """The grsecurity preset: a tree per write until v6.4; cycles near the measured figures."""
    t = history(library_scenario("history/grsecurity-wp"), ["v5.17", "seed-v1", "v6.4"],
                modes=("tdp",))
    assert t.data[("v5.17", "tdp")]["roots_allocated"] == 20
    assert t.data[("v6.4", "tdp")]["exits"] == 0
    assert t.data[("v5.17", "tdp")]["cycles_per_event"] == pytest.approx(46754, rel=0.01)
    assert t.data[("seed-v1", "tdp")]["cycles_per_event"] == pytest.approx(4879, rel=0.01)
    assert cycles_chart_data(t)["v6.4"] == {"tdp": 0}


def test_library_diff_of_a_variant():
    """A variant's diff lists exactly the scenarios where KVM behaves differently."""
    def kvm_mmu_reset_context(vcpu):
        vcpu.kvm.step.resets += 1
        vcpu.ops.kvm_init_mmu(vcpu)
        vcpu.ops.kvm_mmu_new_pgd(vcpu, vcpu.cr3)
    mine = register_era(get_era("v6.18").derive(
        "v6.18~test-review", "test", kvm_mmu_reset_context=kvm_mmu_reset_context))
    t = library_diff(mine, "v6.18")
    assert ("smi-rsm", "shadow") in t.data and ("pcid-lru", "shadow") not in t.data
    assert library_diff("v6.18", "v6.18").rows == []
