"""The classroom widgets: driven without a browser, read through their HTML.

The views (mmu_model.classroom.views: the lab's state and its HTML) are
tested first, on their own; the widget trees around them after."""
import re
import subprocess
import sys

import pytest

from mmu_model import Simulation
from mmu_model.classroom.views import (
    BITS,
    BUTTON_HELP,
    LabState,
    bit_tooltip,
    cache_html,
    differences,
    feedback_html,
    help_html,
    history_labels,
    legend_html,
    shadow_pane_html,
    summary_html,
    tdp_pane_html,
)
from mmu_model.eras import get_era

ipywidgets = pytest.importorskip("ipywidgets")

from mmu_model.classroom.widgets import lab, predict, role_explorer, root_cache, score  # noqa: E402


def states(pane: str) -> list[tuple[str, int]]:
    """(state, root id) of every root box in a pane, in document order."""
    return [(s, int(r)) for s, r in re.findall(r'data-state="(\w+)" data-root="(\d+)"', pane)]


def slot_states(pane: str) -> list[tuple[str, int]]:
    """The boxes before the VM-wide pool: the slots and the dropped roots."""
    return states(pane.split("VM-wide:")[0])


def status(pane: str) -> str:
    return re.search(r'class="mmu-status".*?</div>', pane).group(0)


def summaries(html: str) -> dict:
    """{mode: (kind, current, state, freed ids)} from summary_html's data attributes."""
    return {m: (k, c, st, f.split()) for m, k, c, st, f in re.findall(
        r'class="mmu-summary" data-mode="([\w-]+)" data-kind="([\w-]+)" data-current="(\w+)"'
        r' data-state="(\w*)" data-freed="([\d ]*)"', html)}


def freed_in_pane(pane: str) -> list[str]:
    return [str(r) for s, r in slot_states(pane) if s in ("freed", "destroyed")]


# ---------------------------------------------------------------------------
# The views, without a widget

def test_views_import_no_ui_library():
    """mmu_model.classroom.views is pure: importing it loads no ipywidgets."""
    code = "import sys, mmu_model.classroom.views; print('ipywidgets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_summary_line_says_what_the_pane_shows():
    """v6.18, CR0.WP off: the one-line summary names the root the shadow pane
    shows freed and the new one, with the flush; for TDP, no exit and root #1 kept."""
    st = LabState("v6.18")
    st.apply({"op": "mov_cr0", "clear": ["WP"]})
    html = summary_html(st)
    sums = summaries(html)
    assert sums["shadow"] == ("exit", "2", "new", ["1"])
    assert sums["tdp"] == ("no-exit", "1", "kept", [])
    assert freed_in_pane(shadow_pane_html(st)) == ["1"] and freed_in_pane(tdp_pane_html(st)) == []
    assert "✕ freed #1 (was current)" in html and "★ new #2 is current" in html
    assert "⚡ flushed current" in html and "→ no VM exit" in html


def test_summary_names_the_root_moved_to_prev_roots():
    """A PCID switch keeps the old root in prev_roots: the summary says where it went."""
    st = LabState("v6.18")
    st.apply({"op": "mov_cr3", "value": 0x2001})
    assert "= #1 kept in prev0" in summary_html(st)
    assert ("kept", 1) in slot_states(shadow_pane_html(st))


def test_history_lists_every_step_and_looks_back():
    """The history has one line per step; looking back at step 0 draws the panes
    exactly as they were after step 0."""
    events = [{"op": "mov_cr0", "clear": ["WP"]}, {"op": "mov_cr3", "value": 0x2001},
              {"op": "mov_cr0", "set": ["WP"]}]
    st = LabState("v6.18")
    one = LabState("v6.18")
    one.apply(events[0])
    for ev in events:
        st.apply(ev)
    labels = history_labels(st)
    assert len(labels) == 3 and "mov_cr0 -WP" in labels[0] and "mov_cr3 0x2001" in labels[1]
    assert "shadow: freed #1" in labels[0] and "tdp: no exit" in labels[0]
    assert shadow_pane_html(st.at(0)) == shadow_pane_html(one)
    assert "looking back" in summary_html(st, viewing=0)
    assert summaries(summary_html(st, viewing=0)) == summaries(summary_html(one))


def test_era_switch_marks_where_the_eras_differ():
    """Replayed under v5.17, the WP toggle destroys the TDP root (v6.18 kept it): step 0
    is marked; the CR3 switch after it does the same in both (root ids aside)."""
    st = LabState("v6.18")
    st.apply({"op": "mov_cr0", "clear": ["WP"]})
    st.apply({"op": "mov_cr3", "value": 0x2001})
    st.configure(era="v5.17")
    diffs = differences(st)
    assert list(diffs) == [0]
    assert diffs[0] == [("tdp", "no exit · kept #1", "destroyed #1 · new #2 · flush current")]
    labels = history_labels(st)
    assert labels[0].startswith("≠") and not labels[1].startswith("≠")
    assert "under v6.18" in summary_html(st, viewing=0)
    assert "tdp was no exit · kept #1" in summary_html(st, viewing=0)
    assert "step 0 did something else" in summary_html(st)
    st.configure(era="v5.17")                   # no change: the comparison stays
    assert list(differences(st)) == [0]


def test_every_hover_text_is_in_the_help_a_click_opens():
    """The bits' and buttons' hover texts are all in help_html, inside <details>."""
    era = get_era("v5.15")
    text = help_html("v5.15")
    assert text.startswith("<details")
    import html as h
    for reg, name in BITS:
        for line in bit_tooltip(era, reg, name).split("\n")[1:]:
            assert h.escape(line) in text, line
    for label, tip in BUTTON_HELP.items():
        assert h.escape(tip) in text


def test_legend_folds_and_keeps_every_tag():
    """The lab's legend is a <details> a click opens; it names every state in words."""
    for legend in (legend_html(), legend_html(collapsible=True)):
        for tag in ("NEW", "REUSED", "KEPT", "FREED", "DESTROYED", "UNUSED", "EMPTY", "FLUSHED"):
            assert tag in legend
    assert legend_html(collapsible=True).startswith('<details class="mmu-legend"')


def test_quiz_marks_are_icon_word_and_border():
    """Right, wrong and unanswered parts each carry an icon, a word and their own border."""
    html = feedback_html([("root #1", "freed", "freed"), ("root #2", "kept", "freed"),
                          ("a TLB flush", "?", "yes")], (1, 3), "Answer text")
    marks = re.findall(r'data-mark="(\w+)" style="[^"]*border:([^;]+);', html)
    assert [m for m, _b in marks] == ["right", "wrong", "unanswered"]
    assert len({b for _m, b in marks}) == 3
    for word in ("✓ RIGHT", "✗ WRONG", "? NO ANSWER"):
        assert word in html
    assert "Score: 1 / 3" in html


# ---------------------------------------------------------------------------
# The widgets

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


def test_lab_history_looks_back_and_a_new_step_returns():
    """Picking step 0 in the lab's history redraws the panes as after step 0; the
    next click acts on the latest state and shows it."""
    w = lab("v6.18")
    w.parts.bits["WP"].value = False
    after_0 = w.parts.shadow.value
    w.parts.buttons["MOV CR3"].click()
    assert [v for _l, v in w.parts.history.options] == [0, 1] and w.parts.history.value == 1
    w.parts.history.value = 0
    assert w.parts.shadow.value == after_0 and "looking back" in w.parts.summary.value
    w.parts.buttons["INVLPG"].click()
    assert w.parts.history.value == 2 and "step 2" in w.parts.summary.value


def test_lab_era_switch_marks_the_history():
    """Switching era in the lab marks the steps that did something else before."""
    w = lab("v6.18")
    w.parts.bits["WP"].value = False
    w.parts.era.value = "v5.17"
    assert w.parts.history.options[0][0].startswith("≠")
    assert "under v6.18" in w.parts.summary.value


def test_lab_buttons_have_click_help():
    """Every button of the lab has its hover text in the help a click opens."""
    w = lab()
    assert set(w.parts.buttons) == set(BUTTON_HELP)
    assert "<details" in w.parts.help.value and "<details" in w.parts.legend.value


def test_predict_marks_the_chosen_answer():
    """A choice is shown as CHOSEN (and a check icon on the button) before the reveal;
    after it, each part is RIGHT or WRONG."""
    w = predict(seed=4, n=1)
    item = w.parts.items[0]
    rid, t = next(iter(item.marks.items()))
    assert 'data-mark="unchosen"' in item.chosen[f"root #{rid}"].value
    wrong = "kept" if item.q["answer"]["roots"][rid] == "freed" else "freed"
    t.value = wrong
    assert 'data-mark="chosen"' in item.chosen[f"root #{rid}"].value
    assert t.icons[list(t.options).index(wrong)] == "check"
    item.source.value = item.q["answer"]["root_source"]
    item.reveal.click()
    ans = item.answer.value
    assert re.search(rf'data-part="root #{rid}"><span class="mmu-mark" data-mark="wrong"', ans)
    assert re.search(r'data-part="current root from"><span class="mmu-mark" data-mark="right"', ans)
    assert "Why:" in ans


def test_predict_scoped_and_regenerated():
    """predict takes the quiz's scope; with controls, New questions re-scopes in place."""
    w = predict(seed=2, n=4, era="v6.18", mode=["shadow", "tdp"], nested=False, level=1)
    assert {(q["era"], q["prefix"] == []) for q in w.parts.questions} == {("v6.18", True)}
    assert {q["mode"] for q in w.parts.questions} <= {"shadow", "tdp"}
    c = predict(seed=2, n=3, controls=True)
    c.parts.era.value, c.parts.mode.value, c.parts.level.value = "v5.17", "tdp", 2
    c.parts.new.click()
    assert {(q["era"], q["mode"]) for q in c.parts.questions} == {("v5.17", "tdp")}
    assert all(q["prefix"] for q in c.parts.questions)
