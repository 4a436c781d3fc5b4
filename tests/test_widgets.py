"""The classroom widgets: driven without a browser, read through their HTML."""
import re

import pytest

pytest.importorskip("ipywidgets")

from mmu_model import Simulation  # noqa: E402
from mmu_model.classroom.widgets import (  # noqa: E402
    LabState,
    bit_tooltip,
    cache_html,
    lab,
    legend_html,
    predict,
    role_explorer,
    root_cache,
    score,
    shadow_pane_html,
    tdp_pane_html,
)
from mmu_model.eras import get_era  # noqa: E402


def states(pane: str) -> list[tuple[str, int]]:
    """(state, root id) of every root box in a pane, in document order."""
    return [(s, int(r)) for s, r in re.findall(r'data-state="(\w+)" data-root="(\d+)"', pane)]


def slot_states(pane: str) -> list[tuple[str, int]]:
    """The boxes before the VM-wide pool: the slots and the dropped roots."""
    return states(pane.split("VM-wide:")[0])


def status(pane: str) -> str:
    return re.search(r'class="mmu-status".*?</div>', pane).group(0)


def test_wp_toggle_v6_18_frees_shadow_root_keeps_tdp_root():
    """v6.18: CR0.WP off frees the shadow root and builds one; the TDP root stays, with no exit."""
    w = lab("v6.18")
    w.parts.bits["WP"].value = False
    sh, td = w.parts.shadow.value, w.parts.tdp.value
    assert slot_states(sh) == [("new", 2), ("freed", 1)]
    assert slot_states(td) == [("kept", 1)]
    assert 'data-exit="no"' in status(td) and "guest-owned" in status(td)
    assert "kvm_mmu_reset_context" in sh and "(no kernel calls)" in td


def test_wp_toggle_v5_17_frees_both():
    """v5.17: the same write frees both roots; the TDP root's tree is destroyed."""
    w = lab("v5.17")
    w.parts.bits["WP"].value = False
    assert slot_states(w.parts.shadow.value) == [("new", 2), ("freed", 1)]
    assert slot_states(w.parts.tdp.value) == [("new", 2), ("destroyed", 1)]
    assert 'data-exit="yes"' in status(w.parts.tdp.value)


def test_illegal_write_shows_gp_and_changes_nothing():
    """Setting CR4.LA57 in long mode is the guest's #GP: the panes say so, nothing changes."""
    w = lab()
    before = w.parts.state.registers()
    w.parts.bits["LA57"].value = True
    assert w.parts.bits["LA57"].value is False          # the button follows the register
    assert w.parts.state.registers() == before
    for pane in (w.parts.shadow.value, w.parts.tdp.value):
        assert 'data-fault="GP"' in status(pane) and "Nothing changed" in status(pane)
        assert slot_states(pane) == [("kept", 1)]


def test_undo_restores():
    """Undo replays all but the last event: registers, panes and buttons as before it."""
    w = lab("v6.18")
    start_sh, start_td = w.parts.shadow.value, w.parts.tdp.value
    w.parts.bits["WP"].value = False
    w.parts.buttons["Undo"].click()
    assert w.parts.bits["WP"].value is True
    assert w.parts.shadow.value == start_sh and w.parts.tdp.value == start_td


def test_era_switch_redraws_and_replays():
    """Switching era replays the same events under the new era and redraws both panes."""
    w = lab("v6.18")
    w.parts.bits["WP"].value = False
    w.parts.era.value = "v5.17"
    assert "v5.17" in w.parts.shadow.value and "v5.17" in w.parts.tdp.value
    assert ("destroyed", 1) in slot_states(w.parts.tdp.value)
    assert "v5.17's MMU role bits" in w.parts.bits["WP"].tooltip


def test_buttons_reach_the_model():
    """Each action button adds one event and the panes show the kernel's trace for it."""
    w = lab()
    for label in ("MOV CR3", "INVLPG", "INVPCID", "SMI", "RSM", "KVM_SET_SREGS", "INIT"):
        n = len(w.parts.state.events)
        w.parts.buttons[label].click()
        assert w.parts.state.last_error is None and len(w.parts.state.events) == n + 1
    assert [e["op"] for e in w.parts.state.events] == [
        "mov_cr3", "invlpg", "invpcid", "smi", "rsm", "set_sregs", "init"]
    w.parts.buttons["Reset"].click()
    assert w.parts.state.events == []


def test_second_vcpu_keeps_tdp_root_alive():
    """Two vCPUs before v6.4: one vCPU's WP toggle frees its reference; the other keeps the root."""
    w = lab("v5.17", vcpus=2)
    w.parts.bits["WP"].value = False
    assert slot_states(w.parts.tdp.value) == [("new", 2), ("freed", 1)]
    assert "held by: vCPU1 current" in w.parts.tdp.value


def test_panes_match_model_for_a_cache_hit():
    """The pane marks a prev_roots hit as reused from the cache, and rotation as 'was'."""
    st = LabState("v6.18", "vmx", 1, "long-mode-pcid", modes=("shadow", "tdp"))
    st.apply({"op": "mov_cr3", "value": 0x2001})
    st.apply({"op": "mov_cr3", "value": 0x1000 | (1 << 63)})
    pane = shadow_pane_html(st)
    assert slot_states(pane) == [("reused", 1), ("kept", 2)]
    assert "from the prev_roots cache" in pane and "was current" in pane
    assert slot_states(tdp_pane_html(st)) == [("kept", 1)]


def test_every_state_has_a_text_tag():
    """The legend shows every state with an icon and a word, not colour alone."""
    legend = legend_html()
    for tag in ("NEW", "REUSED", "KEPT", "FREED", "DESTROYED", "UNUSED", "EMPTY", "FLUSHED"):
        assert tag in legend


def test_tooltips_name_role_bits_and_sdm():
    """Tooltips say whether a bit is a role bit in the era and what the SDM invalidates."""
    assert "not an MMU role bit in v6.18" in bit_tooltip(get_era("v6.18"), "cr4", "PGE")
    assert "in v5.15's MMU role bits" in bit_tooltip(get_era("v5.15"), "cr4", "PGE")
    assert "every PCID" in bit_tooltip(get_era("v6.18"), "cr4", "PGE")
    assert "current PCID" in bit_tooltip(get_era("v6.18"), "cr4", "SMEP")


def test_role_explorer_marks_changed_fields():
    """Clearing CR0.WP changes cr0_wp in the CPU role, and in the TDP root role only before v5.19."""
    r = role_explorer("v6.18")
    r.parts.bits["WP"].value = False
    changed = re.findall(r'data-field="(\w+)" data-changed="1"', r.parts.roles.value)
    assert changed.count("cr0_wp") == 3               # shadow cpu, shadow root, TDP cpu
    r.parts.era.value = "v5.17"
    changed = re.findall(r'data-field="(\w+)" data-changed="1"', r.parts.roles.value)
    assert changed.count("cr0_wp") == 4               # ... and the TDP root role too


def test_root_cache_widget_lru():
    """Three CR3 switches: the cache widget shows current then prev_roots, most recent first."""
    c = root_cache()
    for v in (0x2001, 0x3002, 0x1000):
        c.parts.cr3[v].click()
    assert slot_states(c.parts.cache.value) == [("reused", 1), ("kept", 3), ("kept", 2)]
    sim = c.parts.state.sims["shadow"]
    assert [r.hpa.id for r in sim.kvm.vcpus[0].mmu.prev_roots[:2]] == [3, 2]


def test_cache_html_is_pure():
    """cache_html reads a Simulation; no widget needed."""
    sim = Simulation("v6.18", "shadow", start="long-mode-pcid")
    assert 'data-root="1"' in cache_html(sim, None, None)


def test_predict_scores_against_the_model():
    """Marking the model's own answers scores full marks; leaving '?' scores nothing."""
    w = predict(seed=4, n=3)
    for item in w.parts.items:
        assert score(item)[0] == 0
        a = item.q["answer"]
        for rid, t in item.marks.items():
            t.value = a["roots"][rid]
        item.source.value = a["root_source"]
        item.flush.value = "yes" if a["tlb_flushes"] else "no"
        item.reveal.click()
        assert item.score[0] == item.score[1] and "Score" in item.answer.value


def test_pane_shows_a_stale_translation():
    """A checker violation appears in the pane as its own box."""
    from conftest import SCENARIOS

    from mmu_model import load_scenario
    from mmu_model.classroom.widgets import LabState, shadow_pane_html
    sc = load_scenario(SCENARIOS / "noflush-after-full-flush.json")
    state = LabState("v6.18", "vmx", 1, "long-mode-pcid")
    for ev in sc.to_json()["events"][:6]:
        state.apply(ev)
    html = shadow_pane_html(state)
    assert 'class="mmu-violations"' in html and "Stale translation" in html
    assert "frame 0x1004" in html and "step 3 should have invalidated it" in html
