"""The classroom's pure views: the lab's state and the HTML it is drawn as.

:class:`LabState` is a configuration and the events applied so far, with one
:class:`~mmu_model.harness.sim.Simulation` per mode; the functions here turn
its state into HTML strings (``shadow_pane_html``, ``tdp_pane_html``,
``cache_html``, ``role_html``, ``legend_html``), so tests read them without a
browser.  No UI library is imported here: :mod:`.widgets` builds the
ipywidgets trees around these views.

This is the classroom's harness, not a kernel thing, so its names are
ordinary words; the kernel's names appear in what it shows.
"""
from __future__ import annotations

import html

from ..eras import all_eras, get_era
from ..harness.render import step_graph
from ..harness.scenario import parse_event
from ..harness.sim import Simulation
from ..kernel.registers import EFER, PRESETS, X86_CR0, X86_CR4, bit_names
from ..kernel.roles import role_as_dict, role_regs

# ---------------------------------------------------------------------------
# What each bit does, and what the SDM says a change of it invalidates.

BITS = (("cr0", "PG"), ("cr0", "WP"),
        ("cr4", "PAE"), ("cr4", "PSE"), ("cr4", "PGE"), ("cr4", "PCIDE"), ("cr4", "SMEP"),
        ("cr4", "SMAP"), ("cr4", "PKE"), ("cr4", "LA57"),
        ("efer", "NX"), ("efer", "LME"))

BIT_WHAT = {
    "PG": "paging: turns address translation on or off",
    "WP": "write protect: supervisor writes honour read-only pages",
    "PAE": "64-bit page-table entries (PAE or 4/5-level paging)",
    "PSE": "4 MiB pages in 32-bit paging",
    "PGE": "global pages: TLB entries marked global survive a MOV CR3",
    "PCIDE": "PCIDs: CR3 bits 11:0 tag TLB entries with an address-space id",
    "SMEP": "the kernel may not execute user pages",
    "SMAP": "the kernel may not touch user pages unless EFLAGS.AC is set",
    "PKE": "protection keys for user pages (PKRU)",
    "LA57": "5-level paging (may not change in long mode)",
    "NX": "no-execute: the XD bit of page-table entries is honoured",
    "LME": "long mode enable: long mode becomes active when paging is on",
}

# (SDM vol. 3, 4.10.4.1) what the processor invalidates when the bit changes.
BIT_SDM = {
    "PG": "1->0 invalidates every TLB entry of every PCID, global ones included",
    "PGE": "any change invalidates every TLB entry of every PCID, global ones included",
    "PCIDE": "1->0 invalidates every TLB entry of every PCID, global ones included",
    "PAE": "any change invalidates the TLB entries of the current PCID",
    "SMEP": "0->1 invalidates the TLB entries of the current PCID",
}

ROLE_MASK = {"cr0": "cr0_role_bits", "cr4": "cr4_role_bits", "efer": "efer_role_bits"}
FLAGS = {"cr0": X86_CR0, "cr4": X86_CR4, "efer": EFER}


def bit_tooltip(era, reg: str, name: str) -> str:
    """The tooltip of one register bit: what it does, whether it is a role bit
    in ``era``, and what the architecture invalidates when it changes."""
    in_role = bool(getattr(era, ROLE_MASK[reg]) & FLAGS[reg][name])
    role = (f"in {era.name}'s MMU role bits: a change makes KVM recompute the role"
            if in_role else f"not an MMU role bit in {era.name}")
    sdm = BIT_SDM.get(name, "a change invalidates nothing by itself")
    return f"{reg.upper()}.{name}: {BIT_WHAT[name]}.\n{role}.\nSDM: {sdm}."


# ---------------------------------------------------------------------------
# The state: a configuration and the events applied so far.

class LabState:
    """The events applied so far and one Simulation per mode, all driven by
    the same events.  Undo rebuilds the simulations and replays all but the
    last event (a run is deterministic)."""

    def __init__(self, era="v6.18", vendor="vmx", vcpus=1, start="long-mode-pcid",
                 modes=("shadow", "tdp")):
        self.era, self.vendor, self.vcpus, self.start = era, vendor, vcpus, start
        self.modes = tuple(modes)
        self.events: list[dict] = []
        self.last_error: str | None = None
        # (label, history rows) of the configuration before the last
        # configure() that changed it, or None.
        self.previous: tuple[str, list[dict]] | None = None
        self.rebuild()

    def rebuild(self):
        """New simulations from the configuration, with the events replayed."""
        self.sims = {m: Simulation(self.era, m, self.vendor, self.vcpus, self.start)
                     for m in self.modes}
        self.befores = {m: [] for m in self.modes}
        events = [e for e in self.events if e.get("vcpu", 0) < self.vcpus]
        self.events = []
        for ev in events:
            self.apply(ev)

    def apply(self, event: dict) -> dict:
        """Step every simulation with ``event``; return {mode: step outcome}.
        A ScenarioError (bad input) leaves everything as it was."""
        parse_event(event, "event", self.vcpus)
        steps = {}
        for mode, sim in self.sims.items():
            self.befores[mode].append(snapshot(sim))
            steps[mode] = sim.apply(event)
        self.events.append(event)
        return steps

    def configure(self, **changes):
        """Change era, vendor, vcpus or modes and replay the events under the
        new configuration, remembering what each step did before, so the
        history can show where the two configurations differ."""
        before = (self.label(), history(self)) if self.events else None
        for key, value in changes.items():
            if key not in ("era", "vendor", "vcpus", "modes"):
                raise TypeError(f"configure: not a configuration field: {key}")
            setattr(self, key, tuple(value) if key == "modes" else value)
        self.rebuild()
        if before is not None and before[0] != self.label():
            self.previous = before

    def label(self) -> str:
        """The configuration in a few words: era, vendor and the right pane's mode."""
        return f"{self.era} · {self.vendor} · {' / '.join(self.modes)}"

    def at(self, index: int) -> "LabState":
        """A copy of this state replayed up to and including step ``index``."""
        copy = LabState(self.era, self.vendor, self.vcpus, self.start, self.modes)
        copy.events = [dict(e) for e in self.events[:index + 1]]
        copy.rebuild()
        return copy

    def undo(self):
        if self.events:
            self.events.pop()
            self.rebuild()

    def reset(self):
        self.events = []
        self.previous = None
        self.rebuild()

    def last(self, mode: str):
        """(last step outcome, snapshot before it) for ``mode``, or (None, None)."""
        sim = self.sims[mode]
        if not sim.outcomes:
            return None, None
        return sim.outcomes[-1], self.befores[mode][-1]

    def registers(self, vcpu: int = 0) -> dict:
        return self.sims[self.modes[0]].kvm.vcpus[vcpu].regs()

    def start_registers(self) -> dict:
        return PRESETS[self.start].registers()


def snapshot(sim) -> dict:
    """What the panes compare a step against: the next root id, every vCPU's
    slots (root ids) and the VM's roots by id."""
    kvm = sim.kvm
    return {"next_id": kvm.next_id,
            "slots": [[(label, _id(info)) for label, info in v.mmu.slots()] for v in kvm.vcpus],
            "pool": {sp.id: sp for sp in kvm.live_roots()}}


def _id(info):
    return info.hpa.id if info.hpa is not None else None


# ---------------------------------------------------------------------------
# Pure HTML.  Every state has an icon, a text tag and a border style, so
# nothing depends on colour alone (colours: the Okabe-Ito palette).

STATES = {   # state: (icon, tag, colour, border, what it means)
    "new": ("★", "NEW", "#0072B2", "3px solid", "built during this step, empty"),
    "reused": ("↻", "REUSED", "#009E73", "3px double", "an existing root found again"),
    "kept": ("=", "KEPT", "#555555", "2px solid", "held before and after the step"),
    "freed": ("✕", "FREED", "#D55E00", "3px dashed", "a reference dropped this step"),
    "destroyed": ("✖", "DESTROYED", "#D55E00", "3px dotted", "the whole tree is gone"),
    "unused": ("○", "UNUSED", "#777777", "1px dashed", "in the hash, no slot holds it"),
    "empty": ("·", "EMPTY", "#999999", "1px dotted", "no root (INVALID_PAGE)"),
}
FLUSH_COLOUR = "#E69F00"
HATCH = "repeating-linear-gradient(45deg,#fbe3d6 0 6px,#ffffff 6px 12px)"
REUSED_HOW = {"cache": "from the prev_roots cache", "hash": "from the shadow-page hash",
              "shared": "shared with another vCPU", "preserved": "kept alive by the TDP MMU",
              "same": "unchanged"}
MODE_TITLE = {"shadow": "Shadow paging", "tdp": "TDP (TDP MMU)",
              "tdp-legacy": "TDP (legacy MMU, tdp_mmu=0)",
              "nested-tdp": "Nested TDP (L2 under L1's EPT/NPT)"}
SHORT_TITLE = {"shadow": "Shadow paging", "tdp": "TDP", "tdp-legacy": "TDP, legacy MMU",
               "nested-tdp": "Nested TDP"}
RIGHT_PANES = [("TDP (TDP MMU)", "tdp"), ("TDP, legacy MMU", "tdp-legacy"),
               ("nested TDP: the bits are L2's", "nested-tdp")]
BOX = ("font-family:system-ui,sans-serif;font-size:13px;color:#111;line-height:1.35;"
       "box-sizing:border-box;")


def _e(text) -> str:
    return html.escape(str(text))


def chip(state: str, title: str, lines=(), note: str = "", flushed: str = "",
         root_id=None, strike: bool = True, width: int | None = None) -> str:
    """One root (or empty slot) as a box: icon, tag and title (a root's id
    sits on the tag's line), the note, detail lines, the flush."""
    icon, tag, colour, border, meaning = STATES[state]
    bg = HATCH if state in ("freed", "destroyed") else "#ffffff"
    strike = "text-decoration:line-through;" if strike and state in ("freed", "destroyed") else ""
    head = f'<div style="font-weight:700;color:{colour};font-size:12px">{icon} {tag}'
    if title.startswith("#"):
        parts = [head + f' <span style="color:#111;font-size:13px;{strike}">{_e(title)}</span></div>']
    else:
        parts = [head + "</div>", f'<div style="font-weight:600;{strike}">{_e(title)}</div>']
    if note:
        parts.append(f'<div style="font-size:11px;color:#111;font-weight:600">{_e(note)}</div>')
    parts += [f'<div style="font-size:11px;color:#333">{_e(x)}</div>' for x in lines]
    if flushed:
        parts.append(f'<div style="margin-top:2px;padding:0 3px;background:{FLUSH_COLOUR};'
                     f'color:#000;font-size:11px;font-weight:700">⚡ FLUSHED: {_e(flushed)}</div>')
    data = f' data-root="{root_id}"' if root_id is not None else ""
    return (f'<div class="mmu-chip" data-state="{state}"{data} title="{_e(meaning)}" '
            f'style="border:{border} {colour};background:{bg};padding:3px 5px;margin:3px;'
            f'width:{width or (84 if state == "empty" and root_id is None else 138)}px;'
            f'min-height:44px;border-radius:4px;{BOX}line-height:1.25">'
            + "".join(parts) + "</div>")


def legend_html(collapsible: bool = False) -> str:
    """The legend, once for both panes; ``collapsible`` folds it into a
    ``<details>`` element that a click (or Enter) opens and closes."""
    items = [chip(s, meaning, strike=False, width=138) for s, (_i, _t, _c, _b, meaning) in STATES.items()]
    items.append(f'<div style="{BOX}padding:4px 6px;margin:3px;width:122px;border:2px solid '
                 f'{FLUSH_COLOUR}"><div style="background:{FLUSH_COLOUR};font-weight:700;'
                 'font-size:12px;padding:1px 4px">⚡ FLUSHED</div>a TLB flush at the next '
                 'entry: current, guest, all or gva</div>')
    boxes = '<div style="display:flex;flex-wrap:wrap;align-items:stretch">' + "".join(items) + "</div>"
    what = ("each root shows an icon and a word for what the last step did to it, its id, "
            "its pgd and its reference count.")
    if collapsible:
        return (f'<details class="mmu-legend" style="{BOX}"><summary style="cursor:pointer">'
                f'<b>How to read the boxes</b> (legend: click to open or close)</summary>'
                f'{what.capitalize()}{boxes}</details>')
    return (f'<div class="mmu-legend" style="{BOX}"><b>How to read the boxes</b> (the meaning '
            f'of each is written in it here): {what}{boxes}</div>')


def _root_lines(hpa, pgd=None) -> list[str]:
    pgd = f"pgd {pgd:#x}" if pgd is not None else None
    if hpa.kind == "special":
        lines = [pgd, "pae_root → " + " ".join(f"#{e.id}" if e else "-" for e in hpa.entries)]
    else:
        lines = [f"{pgd} · {hpa.kind}" if pgd else hpa.kind, f"root_count {hpa.root_count}"]
    return [x for x in lines if x]


def _slot_state(hpa, label, step, before, mine):
    """(state, note) of the root now in slot ``label``."""
    if hpa is None:
        return "empty", ""
    if before is None:
        return "kept", "start"
    held = {rid: lab for lab, rid in before["slots"][mine]}
    freed = {f["id"] for f in step["freed"]} if step["vcpu"] == mine else set()
    if hpa.id >= before["next_id"]:
        return "new", "special, rebuilt" if hpa.kind == "special" else ""
    if label == "current" and step["vcpu"] == mine and (hpa.id not in held or hpa.id in freed
                                                        or held[hpa.id] != "current"):
        how = REUSED_HOW.get(step["root_source"], step["root_source"])
        return "reused", ("freed, then " + how) if hpa.id in freed else how
    if hpa.id in held:
        return "kept", "" if held[hpa.id] == label else f"was {held[hpa.id]}"
    return "reused", "from the VM's pool"


def slots_html(sim, step, before, vcpu: int = 0) -> str:
    """The vCPU's current root and prev_roots (most recent first), then, in
    the same row when there is room, the roots the step dropped from them."""
    v = sim.kvm.vcpus[vcpu]
    acting = step is not None and step["vcpu"] == vcpu
    flushes = ", ".join(step["tlb_flushes"]) if acting else ""
    cells = []
    for label, info in v.mmu.slots():
        state, note = _slot_state(info.hpa, label, step, before, vcpu)
        head = "current" if label == "current" else f"{label} · {LRU[label]}"
        if info.hpa is None:
            cells.append(_slot(head, chip("empty", "no root")))
            continue
        cells.append(_slot(head, chip(state, f"#{info.hpa.id}", _root_lines(info.hpa, info.pgd),
                                      note, flushes if label == "current" else "",
                                      root_id=info.hpa.id)))
    if acting and step["freed"]:
        now = {_id(i) for _l, i in v.mmu.slots()}
        gone = [f for f in step["freed"] if f["id"] not in now]
        for n, f in enumerate(gone):
            sp = before["pool"].get(f["id"]) if before else None
            state = "destroyed" if f["id"] in step["destroyed"] else "freed"
            lines = [f"pgd {f['pgd']}" + (f" · {sp.kind}" if sp is not None else "")]
            rule = "border-left:2px dashed #777;padding-left:4px;" if n == 0 else ""
            cells.append(f'<div class="mmu-dropped" style="{rule}">' + _slot(
                "dropped this step", chip(state, f"#{f['id']}", lines, f"was {f['slot']}",
                                          root_id=f["id"])) + "</div>")
    return '<div class="mmu-slots" style="display:flex;flex-wrap:wrap">' + "".join(cells) + "</div>"


LRU = {"prev0": "MRU", "prev1": "", "prev2": "LRU"}


def _slot(head, body):
    head = head.rstrip(" ·")
    return (f'<div style="{BOX}margin-right:2px"><div style="font-size:11px;color:#333;max-width:128px;'
            f'text-transform:uppercase;letter-spacing:.03em">{_e(head)}</div>{body}</div>')


def pool_html(sim, step, before) -> str:
    """The VM-wide roots: shadow-page hash roots, or TDP MMU roots with refcounts."""
    kvm = sim.kvm
    holders = {}
    for v in kvm.vcpus:
        contexts = (v.root_mmu, v.guest_mmu) if kvm.nested else (v.mmu,)
        for mmu in contexts:
            for label, info in mmu.slots():
                if info.hpa is None:
                    continue
                where = f"{mmu.name} {label}" if kvm.nested else label
                holders.setdefault(info.hpa.id, []).append(f"vCPU{v.vcpu_id} {where}")
                for e in getattr(info.hpa, "entries", ()):
                    if e is not None:
                        holders.setdefault(e.id, []).append(f"vCPU{v.vcpu_id} pae_root")
    roots = {sp.id: sp for sp in kvm.live_roots()}
    destroyed = set(step["destroyed"]) if step else set()
    for rid in destroyed:
        if before and rid in before["pool"]:
            roots[rid] = before["pool"][rid]
    freed = {f["id"] for f in step["freed"]} if step else set()
    cur = sim.kvm.vcpus[step["vcpu"]].mmu.root.hpa if step else None
    chips = []
    for rid in sorted(roots):
        sp = roots[rid]
        lines = [f"{sp.kind} · gfn {sp.gfn:#x}" if sp.kind == "shadow" else sp.kind]
        count = f"root_count {sp.root_count}"
        if getattr(sp, "tdp_mmu_ref", False):
            count += " (1 is the TDP MMU's own)"
        lines.append(count)
        lines.append("held by: " + (", ".join(holders.get(rid, [])) or "no slot"))
        if rid in destroyed:
            state, note = "destroyed", "last reference dropped"
        elif before is not None and rid >= before["next_id"]:
            state, note = "new", ""
        elif cur is not None and sp is cur and step["root_source"] in REUSED_HOW \
                and step["root_source"] not in ("same", "cache"):
            state, note = "reused", REUSED_HOW[step["root_source"]]
        elif rid in freed:
            state, note = "freed", ("a reference dropped" if holders.get(rid) or sp.kind == "tdp_mmu"
                                    else "unused now, stays in the hash")
        elif not holders.get(rid):
            state, note = "unused", ""
        else:
            state, note = "kept", ""
        chips.append(chip(state, f"#{rid}", lines, note, root_id=rid))
    name = "TDP MMU roots (kvm->arch.tdp_mmu_roots)" if kvm.tdp_mmu_enabled else \
        "Roots in the shadow-page hash (mmu_page_hash)"
    if kvm.nested:
        name = "L1's TDP MMU roots and the shadow-EPT roots in the hash"
    return (f'<div style="{BOX}margin-top:6px;font-weight:600">VM-wide: {name}</div>'
            '<div style="display:flex;flex-wrap:wrap;max-height:300px;overflow:auto">'
            + ("".join(chips) or f'<div style="{BOX}">none</div>') + "</div>")


def status_html(step) -> str:
    """One line saying what the last step was and whether KVM saw it."""
    if step is None:
        return f'<div class="mmu-status" style="{BOX}padding:4px">No step yet: the start state.</div>'
    what = f"step {step['index']} · vCPU{step['vcpu']} · {_e(step['op'])}"
    if step["fault"]:
        return (f'<div class="mmu-status" data-fault="{_e(step["fault"])}" style="{BOX}padding:4px;'
                f'border:3px solid #D55E00;background:{HATCH}"><b>⚠ #{_e(step["fault"])}</b> '
                f'({what}): {_e(step["reason"])}. Nothing changed.</div>')
    if not step["intercepted"]:
        return (f'<div class="mmu-status" data-exit="no" style="{BOX}padding:4px;border:2px solid '
                f'#0072B2"><b>→ no VM exit</b> ({what}): {_e(step["reason"])}. KVM ran nothing; '
                'only the guest register changed.</div>')
    note = f" Note: {_e(step['reason'])}." if step["reason"] else ""
    return (f'<div class="mmu-status" data-exit="yes" style="{BOX}padding:4px;border:1px solid #555">'
            f'<b>VM exit</b> ({what}): KVM ran {len(step["calls"])} functions; root from '
            f'<b>{_e(step["root_source"])}</b>.{note}</div>')


def violations_html(step) -> str:
    """The architectural checker's verdict on the last step, when it objects."""
    if not step or not step.get("violations"):
        return ""
    items = "".join(
        f'<li>vCPU{v["vcpu"]} {_e(v["addr"])} (PCID {v["pcid"]}): the guest can use '
        f'<b>{_e(v["stale"])}</b> from the {_e(v["source"])}; its tables say '
        f'{_e(v["expected"])}' + (f'; step {v["invalidated_by_step"]} should have invalidated it'
                                  if v["invalidated_by_step"] is not None else "") + "</li>"
        for v in step["violations"])
    return (f'<div class="mmu-violations" style="{BOX}padding:4px;margin-top:4px;border:3px double '
            f'#D55E00"><b>⚠ Stale translation</b> (the architecture says it was invalidated):'
            f'<ul style="margin:2px 0 2px 18px;padding:0">{items}</ul></div>')


def totals_html(totals: dict) -> str:
    cells = "".join(f'<td style="padding:1px 6px;border:1px solid #ccc"><span style="color:#444">'
                    f'{_e(k)}</span> <b>{v}</b></td>' for k, v in totals.items())
    return (f'<div style="{BOX}margin-top:4px">Running totals:</div><table style="{BOX}'
            f'border-collapse:collapse"><tr style="display:flex;flex-wrap:wrap">{cells}</tr></table>')


def trace_html(step) -> str:
    text = step_graph(step) if step and step["calls"] else "(no kernel calls)"
    return (f'<div style="{BOX}margin-top:4px">Kernel calls (function_graph):</div>'
            f'<pre class="mmu-trace" style="max-height:15em;max-width:100%;overflow:auto;background:#f6f6f6;'
            f'border:1px solid #ccc;padding:4px;margin:0;font-size:12px;line-height:1.25">'
            f"{_e(text)}</pre>")


def pane_html(sim, step, before, vcpu: int = 0) -> str:
    """A whole pane: title, status, slots, pool, requests, flushes, trace, totals."""
    regs = sim.kvm.vcpus[vcpu].regs()
    title = (f"{MODE_TITLE[sim.mode]} · {sim.era.name} · {sim.vendor} · vCPU{vcpu}")
    reqs = ", ".join(step["requests"]) if step else ""
    fl = ", ".join(step["tlb_flushes"]) if step else ""
    regline = "  ".join(f"{k}={v:#x}" for k, v in regs.items() if k != "smm")
    regline += "  SMM" if regs["smm"] else ""
    return (f'<div class="mmu-pane" data-mode="{sim.mode}" style="{BOX}padding:6px;'
            'border:1px solid #bbb;border-radius:6px;background:#fcfcfc;max-width:100%;'
            'min-width:0;overflow:hidden">'
            f'<div style="font-size:15px;font-weight:700">{_e(title)}</div>'
            f'<div style="font-family:monospace;font-size:12px;color:#333">{_e(regline)}</div>'
            + nested_html(sim, vcpu)
            + status_html(step) + violations_html(step) + slots_html(sim, step, before, vcpu)
            + f'<div style="{BOX}margin-top:2px"><b>Requests raised:</b> '
              f'<span class="mmu-requests">{_e(reqs) or "none"}</span> · <b>TLB flushes:</b> '
              f'<span class="mmu-flushes">{_e(fl) or "none"}</span></div>'
            + pool_html(sim, step, before)
            + trace_html(step) + totals_html(sim.totals()) + "</div>")


def nested_html(sim, vcpu: int = 0) -> str:
    """Nested TDP only: which level runs, and what each context holds."""
    if not sim.kvm.nested:
        return ""
    v = sim.kvm.vcpus[vcpu]
    level = ("L2 runs on guest_mmu, L0's shadow of L1's EPT table" if v.guest_mode
             else "L1 runs on root_mmu (its TDP root)")
    pointer = "EPTP" if sim.vendor == "vmx" else "nCR3"
    held = (f"root_mmu: {_e(_root_name(v.root_mmu.root))} · guest_mmu: "
            f"{_e(_root_name(v.guest_mmu.root))} · {pointer} {v.vmcs12.ept_pointer:#x}")
    return (f'<div class="mmu-nested" style="{BOX}margin:3px 0;padding:3px 6px;'
            f'border-left:4px solid #56B4E9;background:#eef6fb"><b>{_e(level)}</b><br>{held}</div>')


def _root_name(info) -> str:
    return f"root #{info.hpa.id}" if info.hpa is not None else "no root"


def shadow_pane_html(state: LabState, vcpu: int = 0) -> str:
    """The left pane of the lab: shadow paging."""
    return pane_html(state.sims["shadow"], *state.last("shadow"), vcpu)


def tdp_pane_html(state: LabState, vcpu: int = 0) -> str:
    """The right pane of the lab: TDP (whichever TDP mode the state runs)."""
    mode = next(m for m in state.modes if m != "shadow")
    return pane_html(state.sims[mode], *state.last(mode), vcpu)


def cache_html(sim, step, before, vcpu: int = 0) -> str:
    """The root cache in LRU order, with the rotation the last step made."""
    order = ('<div style="{0}font-size:12px;color:#333">Left to right: the current root, '
             'then prev_roots from most to least recently used; a miss evicts the rightmost.'
             '</div>').format(BOX)
    return (f'<div class="mmu-cache" style="{BOX}padding:6px;border:1px solid #bbb;'
            'border-radius:6px">' + status_html(step) + order
            + slots_html(sim, step, before, vcpu) + trace_html(step) + "</div>")


def role_html(state: LabState, vcpu: int = 0) -> str:
    """The roles the era's formulas give for the current registers, shadow
    paging and TDP, CPU role and root role; fields that differ from the start
    state are marked.  (Computed from the registers, as KVM would at its next
    exit: a write that does not exit leaves KVM's copy stale.)"""
    era = get_era(state.era)
    sim = state.sims[state.modes[0]]
    now = role_regs(sim.kvm.vcpus[vcpu])
    was = role_regs(Simulation(era, "shadow", state.vendor, 1, state.start).kvm.vcpus[0])
    rows, heads = {}, []
    for tdp, title in ((False, MODE_TITLE["shadow"]), (True, "TDP")):
        roles_now, roles_was = era.calc_roles(now, tdp), era.calc_roles(was, tdp)
        for i, name in ((0, era.cpu_role_name), (1, "root_role")):
            r_now = roles_now[i].base if i == 0 else roles_now[i]
            r_was = roles_was[i].base if i == 0 else roles_was[i]
            now_d = role_as_dict(r_now, era.page_role_fields)
            was_d = role_as_dict(r_was, era.page_role_fields)
            heads.append(f"{title}: {name}")
            for k, val in now_d.items():
                rows.setdefault(k, []).append((val, val != was_d.get(k)))
    th = "".join(f'<th style="padding:2px 6px;border:1px solid #ccc">{_e(h)}</th>' for h in heads)
    body = ""
    for field, vals in rows.items():
        tds = "".join(
            f'<td data-field="{field}" data-changed="{int(ch)}" style="padding:2px 6px;'
            f'border:{"3px solid #D55E00" if ch else "1px solid #ccc"};'
            f'{"font-weight:700" if ch else ""}">{_e(int(v) if isinstance(v, bool) else v)}'
            f'{" ◀ changed" if ch else ""}</td>' for v, ch in vals)
        cell = "padding:2px 6px;border:1px solid #ccc;font-family:monospace"
        body += f'<tr><td style="{cell}">{field}</td>{tds}</tr>'
    return (f'<table class="mmu-roles" style="{BOX}border-collapse:collapse"><tr>'
            f'<th style="padding:2px 6px;border:1px solid #ccc">field</th>{th}</tr>{body}</table>')


def eras_role_html(regs: dict) -> str:
    """For these registers: per era, the role bits and what the TDP root role
    keeps of the guest's CR0.WP and EFER.NX."""
    from ..kernel.roles import RoleRegs
    rr = RoleRegs(regs["cr0"], regs["cr4"], regs["efer"], regs.get("smm", False))
    lines = []
    for era in all_eras():
        tdp_role = era.calc_roles(rr, True)[1]
        bits = " ".join(bit_names("cr0", era.cr0_role_bits) + bit_names("cr4", era.cr4_role_bits)
                        + bit_names("efer", era.efer_role_bits))
        lines.append(f'<tr><td style="padding:2px 6px;border:1px solid #ccc">{_e(era.name)}</td>'
                     f'<td style="padding:2px 6px;border:1px solid #ccc">{_e(bits)}</td>'
                     f'<td style="padding:2px 6px;border:1px solid #ccc">cr0_wp={int(tdp_role.cr0_wp)} '
                     f'efer_nx={int(tdp_role.efer_nx)}</td></tr>')
    head = ("<tr><th>era</th><th>role bits (CR0, CR4, EFER)</th>"
            "<th>TDP root role for these registers</th></tr>")
    rows = "".join(lines)
    return f'<table class="mmu-era-roles" style="{BOX}border-collapse:collapse">{head}{rows}</table>'


# ---------------------------------------------------------------------------
# This step in one line, and the history of steps

def step_summary(step, before) -> dict:
    """What one step did to the acting vCPU's roots, from its outcome and the
    snapshot before it: ``kind`` (``start``, ``fault``, ``no-exit``, ``exit``),
    ``freed`` [(id, slot, destroyed?)], ``current`` (id or None), ``state`` of
    the current root (new, reused, kept, empty), ``how`` (where a reused root
    came from), ``flushed`` and ``requests``."""
    if step is None:
        return {"kind": "start", "freed": [], "current": None, "state": "", "how": "",
                "flushed": [], "requests": []}
    root = step["root"]["id"] if step["root"] else None
    source = step["root_source"]
    if root is None:
        state, how = "empty", ""
    elif before is not None and root >= before["next_id"]:
        state, how = "new", "special, rebuilt" if source == "special" else ""
    elif source in REUSED_HOW and source != "same":
        state, how = "reused", REUSED_HOW[source]
    else:
        state, how = "kept", ""
    kind = "fault" if step["fault"] else "exit" if step["intercepted"] else "no-exit"
    moved = None
    if before is not None and step["vcpu"] < len(before["slots"]):
        old = dict(before["slots"][step["vcpu"]]).get("current")
        prev = [r["id"] if r else None for r in step["prev_roots"]]
        if old is not None and old != root and old in prev:
            moved = (old, f"prev{prev.index(old)}")
    return {"kind": kind, "fault": step["fault"], "index": step["index"], "moved": moved,
            "freed": [(f["id"], f["slot"], f["id"] in step["destroyed"]) for f in step["freed"]],
            "current": root, "state": state, "how": how,
            "flushed": list(step["tlb_flushes"]), "requests": list(step["requests"])}


def summary_text(summary: dict, short: bool = False) -> str:
    """One line: "✕ freed #1 (was current) · ★ new #2 is current · ⚡ flushed current".
    Every part has an icon and a word, as the boxes do; ``short`` drops the
    icons and the slot names (for the history list)."""
    kind = summary["kind"]
    if kind == "start":
        return "the start state"
    if kind == "fault":
        return f"#{summary['fault']}: nothing changed" if short else \
            f"⚠ #{summary['fault']}: nothing changed"
    parts = [("no exit" if short else "→ no VM exit")] if kind == "no-exit" else []
    freed = summary["freed"]
    for rid, slot, destroyed in freed:
        word = "destroyed" if destroyed else "freed"
        icon = STATES[word][0]
        parts.append(f"{word} #{rid}" if short else f"{icon} {word} #{rid} (was {slot})")
    if not freed and not short:
        parts.append("nothing freed")
    if summary.get("moved"):
        rid, slot = summary["moved"]
        parts.append(f"#{rid} to {slot}" if short else f"= #{rid} kept in {slot}")
    cur, state = summary["current"], summary["state"]
    if cur is None:
        parts.append("no current root")
    elif short:
        parts.append(f"{state} #{cur}")
    else:
        how = f" ({summary['how']})" if summary["how"] else ""
        parts.append(f"{STATES[state][0]} {state} #{cur} is current{how}")
    fl = summary["flushed"]
    if short:
        parts += [f"flush {', '.join(fl)}"] if fl else []
    else:
        parts.append(f"⚡ flushed {', '.join(fl)}" if fl else "no TLB flush")
    return " · ".join(parts)


def history(state: LabState) -> list[dict]:
    """Every step so far: {index, event, summaries {mode: summary}}."""
    from ..harness.render import event_label
    rows = []
    for i, ev in enumerate(state.events):
        sums = {m: step_summary(state.sims[m].outcomes[i], state.befores[m][i])
                for m in state.modes}
        rows.append({"index": i, "event": event_label(parse_event(ev, "event", state.vcpus)),
                     "vcpu": ev.get("vcpu", 0), "summaries": sums})
    return rows


def _sides(state_modes, sums) -> dict:
    """{"left": ..., "right": ...} from {mode: summary}: the left pane is shadow paging."""
    right = next((m for m in state_modes if m != "shadow"), None)
    return {"left": sums.get("shadow"), "right": sums.get(right) if right else None}


def _shape(text: str) -> str:
    """A summary without its root ids: two eras that do the same thing to
    differently numbered roots do not differ."""
    import re
    return re.sub(r"#\d+", "#", text)


def differences(state: LabState) -> dict:
    """{step index: [(pane, before, now)]} for the steps whose summary differs
    (root ids aside) from the configuration before the last era, vendor or
    pane switch; ``pane`` is "shadow" or the right pane's mode."""
    if state.previous is None:
        return {}
    label, old_rows = state.previous
    old_modes = tuple(label.split(" · ")[2].split(" / "))
    out = {}
    for row, old in zip(history(state), old_rows):
        now = _sides(state.modes, row["summaries"])
        was = _sides(old_modes, old["summaries"])
        diff = []
        for side in ("left", "right"):
            if not (was[side] and now[side]):
                continue
            b, n = summary_text(was[side], True), summary_text(now[side], True)
            if _shape(b) != _shape(n):
                name = "shadow" if side == "left" else next(m for m in old_modes if m != "shadow")
                diff.append((name, b, n))
        if diff:
            out[row["index"]] = diff
    return out


def history_labels(state: LabState) -> list[str]:
    """One plain-text line per step for the history list, newest last; a step
    that did something else before the last era switch starts with "≠"."""
    diffs = differences(state)
    right = next((m for m in state.modes if m != "shadow"), "tdp")
    labels = []
    for row in history(state):
        sums = row["summaries"]
        mark = "≠ " if row["index"] in diffs else "   "
        vcpu = f" vCPU{row['vcpu']}" if state.vcpus > 1 else ""
        labels.append(f"{mark}{row['index']}{vcpu} · {row['event']} │ shadow: "
                      f"{summary_text(sums['shadow'], True)} │ {right}: "
                      f"{summary_text(sums[right], True)}")
    return labels


def _changed(before: str, now: str) -> str:
    """The parts of configuration label ``before`` that differ from ``now``."""
    parts = [b for b, n in zip(before.split(" · "), now.split(" · ")) if b != n]
    return " · ".join(parts) or before


def summary_html(state: LabState, vcpu: int = 0, viewing: int | None = None) -> str:
    """The "this step" lines, one per pane, for the lab's header: what the step
    shown (the last, or ``viewing``) freed, reused or built, and flushed; and,
    after an era switch, what the same step did before it."""
    n = len(state.events)
    index = n - 1 if viewing is None else viewing
    shown = state if viewing is None or viewing == n - 1 else state.at(viewing)
    lines = []
    for mode in state.modes:
        step, before = shown.last(mode)
        summ = step_summary(step, before)
        data = (f' data-mode="{mode}" data-kind="{summ["kind"]}" data-current="{summ["current"]}"'
                f' data-state="{summ["state"]}" data-freed="'
                + " ".join(str(f[0]) for f in summ["freed"]) + '"')
        lines.append(f'<div class="mmu-summary"{data} style="white-space:normal">'
                     f'<b>{_e(SHORT_TITLE[mode])}</b>: {_e(summary_text(summ))}</div>')
    if n == 0:
        head = "This step: none yet. Toggle a bit or press a button; each step is listed on the right."
    else:
        ev = history(shown)[index]["event"]
        head = f"This step: step {index} · {ev}"
        if viewing is not None and viewing != n - 1:
            head += f" (looking back: {n} steps so far; pick the last to return)"
    diffs = differences(state)
    diff = diffs.get(index)
    note = ""
    if diffs and not diff:
        which = ", ".join(str(i) for i in diffs)
        note = (f'<div class="mmu-differs" style="margin-top:2px;padding:0 4px;border:2px dashed '
                f'#CC79A7">≠ under '
                f'{_e(_changed(state.previous[0], state.label()))}, step{"s" if len(diffs) > 1 else ""}'
                f' {which} did something else (≠ in the steps list: pick one)</div>')
    if diff:
        was = state.previous[0]
        note = (f'<div class="mmu-differs" style="margin-top:2px;padding:0 4px;border:2px dashed '
                f'#CC79A7">≠ <b>under {_e(_changed(was, state.label()))}</b>: ' + "; ".join(
                    f"{_e(name)} was {_e(b)}" for name, b, _n in diff) + "</div>")
    return (f'<div class="mmu-step" style="{BOX}padding:3px 6px;border:2px solid #0072B2;'
            f'border-radius:4px;background:#f3f8fc;max-width:100%;overflow:hidden">'
            f'<div style="font-weight:700">{_e(head)}</div>'
            + "".join(lines) + note + "</div>")


# ---------------------------------------------------------------------------
# Help that a click opens (no hover needed)

BUTTON_HELP = {
    "MOV CR3": "guest MOV to CR3 with the address space picked in the CR3 menu "
               "(no-flush: bit 63 set)",
    "INVLPG": "guest INVLPG of address 0x1000",
    "INVPCID": "guest INVPCID of the chosen type, for the picked PCID",
    "SMI": "a system-management interrupt: the vCPU enters SMM",
    "RSM": "leave SMM",
    "KVM_SET_SREGS": "userspace restores the start registers",
    "INIT": "an INIT signal: registers back to their reset values",
    "Undo": "replay every step but the last",
    "Reset": "back to the start state",
}


def help_html(era_name: str) -> str:
    """What every bit and button does, in a ``<details>`` element a click
    opens: the same words as the hover texts, so a projector or a touch
    screen reaches them too."""
    era = get_era(era_name)
    rows = "".join(
        f'<tr><td style="padding:1px 6px;border:1px solid #ccc;font-family:monospace">'
        f'{reg.upper()}.{name}</td><td style="padding:1px 6px;border:1px solid #ccc">'
        + "<br>".join(_e(x) for x in bit_tooltip(era, reg, name).split("\n")[1:])
        + "</td></tr>" for reg, name in BITS)
    bits = "".join(f"<li><b>{_e(reg.upper())}.{_e(name)}</b>: {_e(BIT_WHAT[name])}</li>"
                   for reg, name in BITS)
    buttons = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in BUTTON_HELP.items())
    return (f'<details class="mmu-help" style="{BOX}"><summary style="cursor:pointer">'
            f"<b>What each bit and button does</b> (click): blue bits are in {_e(era.name)}'s "
            "MMU role, ✓ marks a bit that is set</summary>"
            f'<div style="display:flex;flex-wrap:wrap;gap:12px"><ul style="margin:2px 0 2px 18px;'
            f'padding:0;max-width:36em">{bits}</ul><ul style="margin:2px 0 2px 18px;padding:0;'
            f'max-width:30em">{buttons}</ul></div><table style="{BOX}border-collapse:collapse">'
            f'<tr><th>bit</th><th>in {_e(era.name)}, and what the SDM invalidates</th></tr>'
            f"{rows}</table></details>")


# ---------------------------------------------------------------------------
# The quiz's marks: chosen, right, wrong (icon, word and border, as the roots)

MARK_STYLE = {   # kind: (icon, word, border, background)
    "chosen": ("▶", "CHOSEN", "3px solid #0072B2", "#ffffff"),
    "unchosen": ("?", "NOT CHOSEN YET", "1px dotted #777777", "#ffffff"),
    "right": ("✓", "RIGHT", "3px solid #009E73", "#e8f6f0"),
    "wrong": ("✗", "WRONG", "3px dashed #D55E00", HATCH),
    "unanswered": ("?", "NO ANSWER", "2px dotted #777777", "#ffffff"),
}


def mark_html(kind: str, text: str) -> str:
    """One mark: icon, word and border for ``kind`` (see MARK_STYLE), then text."""
    icon, word, border, bg = MARK_STYLE[kind]
    return (f'<span class="mmu-mark" data-mark="{kind}" style="{BOX}display:inline-block;'
            f'border:{border};background:{bg};padding:1px 6px;margin:1px 0;border-radius:3px">'
            f'<b>{icon} {word}</b> {_e(text)}</span>')


def choice_html(value: str) -> str:
    """What the student has chosen for one part of a question, before the reveal."""
    return mark_html("unchosen", "") if value == "?" else mark_html("chosen", value)


def feedback_html(rows, score, answer: str) -> str:
    """After the reveal: per part (what, chosen, the model's) a RIGHT, WRONG
    or NO ANSWER mark, the score and the model's answer text."""
    items = []
    for what, mine, model in rows:
        kind = "unanswered" if mine == "?" else "right" if mine == model else "wrong"
        said = "you gave none" if mine == "?" else f"you said {mine}"
        items.append(f'<div data-part="{_e(what)}">{mark_html(kind, f"{what}: {said}")} '
                     f"the model says <b>{_e(model)}</b></div>")
    return (f'<div class="mmu-feedback" style="{BOX}">' + "".join(items)
            + f'<div style="margin:3px 0"><b>Score: {score[0]} / {score[1]}</b></div>'
            f'<pre style="{BOX}font-family:monospace;white-space:pre-wrap">{_e(answer)}</pre></div>')
