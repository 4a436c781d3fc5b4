"""Helpers for the patch-review notebook: the seed thread's claims as experiments.

The review of "KVM: x86: do not unload MMU roots on all role changes" (v1
12/12, February 2022) made claims a reader can check on the model: which
flows the change reaches, where an unload stands in for a TLB flush, when
freeing every root is needed.  The functions here run the experiments and
return small :class:`Table` objects: text when printed, an HTML table in a
notebook (``_repr_html_``, no UI library), and the raw outcomes for asserts.
Nothing here models the kernel; it only runs and summarises the model.
"""
from __future__ import annotations

import html
import statistics
from dataclasses import dataclass, field

from ..analysis.ablate import DECISIONS, V6_DECISIONS, ablated
from ..analysis.cost import step_cost
from ..analysis.search import find_violation, reproduction
from ..eras import Era, get_era
from ..harness.render import event_label
from ..harness.scenario import Scenario, library_names, load_scenario, parse_event, parse_scenario
from ..harness.sim import Simulation, run_scenario
from ..kernel.roles import role_as_dict

LORE = "https://lore.kernel.org/kvm/"

# The messages the notebook follows: key -> (Message-ID, author, date, what it is).
MESSAGES = {
    "v1-cover": ("20220209170020.1775368-1-pbonzini@redhat.com", "Paolo Bonzini", "2022-02-09",
                 "v1 0/12: the series and why (the TDP MMU is slow for CR0-heavy guests)"),
    "v1-12": ("20220209170020.1775368-13-pbonzini@redhat.com", "Paolo Bonzini", "2022-02-09",
              "v1 12/12: the patch under review, with the vmexit.flat figures"),
    "sean-1": ("YgavcP/jb5njjKKn@google.com", "Sean Christopherson", "2022-02-11",
               "review: too risky for SMM and KVM_SET_SREGS; unload vs flush; a sketch"),
    "paolo-1": ("5f42d1ef-f6b7-c339-32b9-f4cf48c21841@redhat.com", "Paolo Bonzini", "2022-02-14",
                "reply: SMM flushes, offers KVM_REQ_MMU_UPDATE_ROOT"),
    "sean-2": ("YgqsU8j80M1ZpWPx@google.com", "Sean Christopherson", "2022-02-14",
               "freeing all roots is needed only when the MMU shadows the guest"),
    "seed": ("29e1edc7-9f9f-0663-997f-3416269b6a89@redhat.com", "Paolo Bonzini", "2022-02-15",
             "the seed mail: the TDP case is okay, kvm_init_mmu() is enough"),
    "v2-cover": ("20220217210340.312449-1-pbonzini@redhat.com", "Paolo Bonzini", "2022-02-17",
                 "v2 0/18: 1-12 and 17 merged for v5.18"),
    "v2-16": ("20220217210340.312449-17-pbonzini@redhat.com", "Paolo Bonzini", "2022-02-17",
              "v2 16/18: KVM_REQ_MMU_UPDATE_ROOT (never merged)"),
    "v2-17": ("20220217210340.312449-18-pbonzini@redhat.com", "Paolo Bonzini", "2022-02-17",
              "v2 17/18: flush the TLB separately from the MMU reset (merged, v5.18)"),
    "sean-3": ("YhATewkkO/l4P9UN@google.com", "Sean Christopherson", "2022-02-18",
               "\"Please no\": no new deferred root loads"),
    "krause-v4": ("20230322013731.102955-1-minipli@grsecurity.net", "Mathias Krause", "2023-03-22",
                  "the CR0.WP series merged for v6.4"),
}

# kvm-unit-tests vmexit.flat, cycles per CR0.WP toggle (v1 12/12's changelog).
VMEXIT_FLAT = {"tdp": (46754, 4879), "tdp-legacy": (5096, 4875), "shadow": (5150, 5006)}

SOURCE_WORDS = {
    "same": "same root kept",
    "cache": "reused from prev_roots",
    "hash": "found again in the hash",
    "shared": "shared with another vCPU",
    "preserved": "kept alive by the TDP MMU",
    "new": "NEW empty root built",
    "special": "PAE root rebuilt",
}


def lore(key_or_id: str) -> str:
    """The lore.kernel.org address of a message (a key of MESSAGES, or a Message-ID)."""
    msgid = MESSAGES[key_or_id][0] if key_or_id in MESSAGES else key_or_id.strip("<>")
    return f"{LORE}{msgid}/"


# ---------------------------------------------------------------------------
# Tables

@dataclass
class Table:
    """Rows of cells; a cell is text, or (text, url) for a link."""
    columns: list
    rows: list
    caption: str = ""
    data: dict = field(default_factory=dict)     # the raw results, for asserts

    def __str__(self) -> str:
        cells = [[c[0] if isinstance(c, tuple) else str(c) for c in r] for r in self.rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(self.columns)]
        line = "  ".join("{:<%d}" % w for w in widths)
        out = [self.caption] if self.caption else []
        out += [line.format(*self.columns).rstrip(), line.format(*("-" * w for w in widths))]
        return "\n".join(out + [line.format(*r).rstrip() for r in cells])

    def _repr_html_(self) -> str:
        def cell(c):
            if isinstance(c, tuple):
                return f'<a href="{html.escape(c[1])}">{html.escape(c[0])}</a>'
            return html.escape(str(c)).replace("\n", "<br>")
        head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.columns)
        body = "".join("<tr>" + "".join(f"<td style='text-align:left;vertical-align:top'>"
                                        f"{cell(c)}</td>" for c in r) + "</tr>"
                       for r in self.rows)
        cap = f"<caption style='text-align:left'>{html.escape(self.caption)}</caption>"
        return (f"<table class='mmu-review'>{cap if self.caption else ''}"
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def thread() -> Table:
    """The messages of the review, oldest first, with their lore links."""
    rows = [[date, who, (what, lore(key))] for key, (_m, who, date, what) in MESSAGES.items()]
    return Table(["date", "from", "message"], rows)


# ---------------------------------------------------------------------------
# Scenarios and comparisons

def library_scenario(name: str) -> Scenario:
    """A scenario of the project's library by name: ``"smi-rsm"``, ``"history/grsecurity-wp"``."""
    return load_scenario(name)


def make_scenario(name: str, start: str, events: list, description: str = "") -> Scenario:
    """A scenario from a start preset and a list of events (the contract's format)."""
    return parse_scenario({"name": name, "description": description, "start": start,
                           "events": events})


def describe_event(ev: dict) -> str:
    """A guest action in words a newcomer can read."""
    op = ev["op"]
    if op == "mov_cr3":
        v = ev["value"]
        flag = ", no-flush" if v >> 63 else ""
        return f"MOV CR3 {v & ~(1 << 63):#x}{flag}"
    if op == "access":
        return f"guest touches {ev['addr']:#x}"
    if op == "write_pte":
        frame = f"frame {(ev['value'] >> 12) & 0xFFFFFFFFFF:#x}" if ev["value"] & 1 else "not present"
        return f"guest rewrites {ev['addr']:#x} in space {ev['cr3']:#x} -> {frame}"
    if op == "write_ept":
        frame = f"L1 frame {(ev['value'] >> 12) & 0xFFFFFFFFFF:#x}" if ev["value"] & 7 else "not present"
        return f"L1 rewrites L2 page {ev['gpa']:#x} in EPT table {ev['eptp'] & ~0xFFF:#x} -> {frame}"
    if op == "vmentry":
        return "L1 enters L2 (" + event_label(ev).replace("vmentry", "VMLAUNCH").strip() + ")"
    if op == "vmexit":
        return "L2 exits to L1"
    if op in ("invept", "invvpid"):
        return "L1: " + event_label(ev).replace(op, op.upper())
    words = {"smi": "SMI (enter SMM)", "rsm": "RSM (leave SMM)", "init": "INIT"}
    if op in words:
        return words[op]
    label = event_label(ev)
    for a, b in (("mov_cr0 ", "MOV CR0 "), ("mov_cr4 ", "MOV CR4 "), ("wrmsr_efer ", "WRMSR EFER "),
                 ("set_sregs ", "KVM_SET_SREGS ")):
        label = label.replace(a, b)
    return label


def describe_step(step: dict) -> str:
    """What KVM did in one step, in a few words: root, frees, flushes, stale translations."""
    if step["fault"]:
        return f"guest #{step['fault']}"
    if not step["intercepted"]:
        parts = ["no VM exit"]
    else:
        parts = [SOURCE_WORDS.get(step["root_source"], step["root_source"])]
    if step["root"]:
        parts[0] += f" (#{step['root']['id']})"
    if step.get("nested"):
        parts[0] = f"{step['nested']['level']}: {parts[0]}"
    if step["freed"]:
        parts.append("freed " + ", ".join(f["slot"] for f in step["freed"]))
    if step["destroyed"]:
        parts.append(f"{len(step['destroyed'])} tree(s) destroyed")
    if step["tlb_flushes"]:
        kinds = dict.fromkeys(step["tlb_flushes"])
        parts.append("flush " + ", ".join(
            k + (f" \u00d7{step['tlb_flushes'].count(k)}" if step["tlb_flushes"].count(k) > 1 else "")
            for k in kinds))
    for v in step.get("violations", ()):
        where = "L2 page " if v.get("kind") == "ept" else ""
        parts.append(f"STALE: {where}{v['addr']} -> {v['stale']} (tables: {v['expected']})")
    return "; ".join(parts)


def _name(era) -> str:
    return era.name if isinstance(era, Era) else era


def side_by_side(scenario: Scenario, eras, mode: str | None = None,
                 vendor: str | None = None) -> Table:
    """Run ``scenario`` under each era and put the steps next to each other.

    ``data`` holds the outcome documents by era name, so
    ``table.data["seed-v1"]["steps"][2]["root_source"]`` reads one result.
    """
    docs = {_name(e): run_scenario(scenario, e, mode, vendor) for e in eras}
    rows = [[str(i), describe_event(ev)] + [describe_step(d["steps"][i]) for d in docs.values()]
            for i, ev in enumerate(scenario.events)]
    totals = [["", "root pages allocated (a PAE root is 5)"] +
              [str(d["totals"]["roots_allocated"]) for d in docs.values()]]
    first = next(iter(docs.values()))
    caption = f"{scenario.name}: {first['mode']}, {first['vendor']}"
    return Table(["step", "guest action"] + list(docs), rows + totals, caption, docs)


def root_roles(eras, events, mode: str = "tdp", vendor: str = "vmx",
               start: str = "long-mode") -> Table:
    """The MMU's root role (what a root must have been built for) before and
    after ``events``, per era: only the fields that change anywhere, and, per
    era, whether it changed at all (``data[era]``: True if it did)."""
    roles = {}
    for era in eras:
        sim = Simulation(era, mode, vendor, 1, start, trace=False)
        fields = sim.era.page_role_fields
        before = role_as_dict(sim.kvm.vcpus[0].mmu.root_role, fields)
        for ev in events:
            sim.apply(ev)
        roles[_name(era)] = (before, role_as_dict(sim.kvm.vcpus[0].mmu.root_role, fields))
    changed = sorted({k for b, a in roles.values() for k in b if b.get(k) != a.get(k)})
    rows = [[k] + [f"{b.get(k)} -> {a.get(k)}" for b, a in roles.values()] for k in changed]
    rows.append(["role changed?"] + ["yes" if b != a else "no" for b, a in roles.values()])
    data = {e: b != a for e, (b, a) in roles.items()}
    return Table(["root role field"] + list(roles), rows,
                 f"{mode}: " + ", ".join(describe_event(parse_event(e, "", 1)) for e in events),
                 data)


# ---------------------------------------------------------------------------
# The checker

def search(era, modes=("shadow", "tdp", "tdp-legacy"), examples: int = 2000,
           baseline=None, seed: int = 0, vendor: str = "vmx") -> Table:
    """Random guest programs under ``era`` per mode; the shrunk first violation.

    With ``baseline``, only violations the baseline era does not show count.
    ``data[mode]`` is the reproduction (a scenario dict) or None.
    """
    rows, data = [], {}
    for mode in modes:
        found, n = find_violation(era, mode, vendor, examples=examples, seed=seed,
                                  baseline=baseline)
        data[mode] = reproduction(_name(era), mode, vendor, found) if found else None
        if found:
            v = found[2][1][0]
            verdict = (f"stale translation after {n} programs: {v['addr']} -> {v['stale']}, "
                       f"the tables say {v['expected']}")
        else:
            verdict = f"none found in {n} programs"
        rows.append([mode, f"{len(found[1])} steps" if found else "-", verdict])
    cap = f"checker: {_name(era)}" + (f" (violations that {_name(baseline)} does not show)"
                                      if baseline else "")
    return Table(["mode", "shortest program", "result"], rows, cap, data)


def replay(repro: dict, eras) -> Table:
    """A shrunk reproduction (from :func:`search`), step by step, under several eras."""
    sc = parse_scenario({k: v for k, v in repro.items() if k != "era"})
    return side_by_side(sc, eras)


def ablation_rows(era: str, decision_ids, modes=("shadow", "tdp", "tdp-legacy"),
                  examples: int = 600) -> Table:
    """Remove one unload or flush of ``era`` at a time and search (mmu_model.ablate).

    A row says NEEDED when a violation appears that ``era`` itself does not
    show; otherwise how many programs found none (a search, not a proof).
    ``data[(decision id, mode)]`` is the shrunk program or None.
    """
    base = get_era(era)
    rows, data = [], {}
    for d in [d for d in DECISIONS.get(era, V6_DECISIONS) if d.id in decision_ids]:
        variant = ablated(base, d)
        for k, mode in enumerate(modes):
            found, n = find_violation(variant, mode, examples=examples, baseline=base)
            data[(d.id, mode)] = found[1] if found else None
            verdict = "NEEDED" if found else f"no violation in {n} programs"
            program = "; ".join(describe_event(parse_event(e, "", 1)) for e in found[1]) \
                if found else ""
            rows.append([d.label if k == 0 else "", mode, verdict, program])
    return Table(["removed from " + era, "mode", "result", "shortest program"], rows, data=data)


# ---------------------------------------------------------------------------
# History and cost

def history(scenario: Scenario, eras, modes=("tdp", "tdp-legacy", "shadow"),
            vendor: str = "vmx") -> Table:
    """Per era and mode: exits, resets, roots built, trees destroyed, reuses and
    the cost model's cycles for a typical event (the median step: the first
    toggle's root build aside, as vmexit.flat's loop measures).
    ``data[(era, mode)]`` is the totals dict plus ``cycles_per_event``."""
    rows, data = [], {}
    for era in eras:
        for mode in modes:
            doc = run_scenario(scenario, era, mode, vendor, trace=False)
            typical = statistics.median(step_cost(s, mode) for s in doc["steps"])
            t = dict(doc["totals"], cycles_per_event=int(typical))
            data[(_name(era), mode)] = t
            reused = t["cache_hits"] + t["hash_hits"] + t.get("tdp_reuses", 0)
            rows.append([_name(era), mode, str(t["exits"]), str(t["resets"]),
                         str(t["roots_allocated"]), str(t["roots_destroyed"]), str(reused),
                         f"{t['cycles_per_event']:,}"])
    cols = ["era", "mode", "exits", "resets", "roots built", "trees destroyed", "roots reused",
            "est. cycles per event (median)"]
    return Table(cols, rows, f"{scenario.name} ({len(scenario.events)} events, {vendor})", data)


def cycles_chart_data(table: Table) -> dict:
    """{era: {mode: cycles per event}} from a :func:`history` table, for plots.plot_counts."""
    out: dict = {}
    for (era, mode), t in table.data.items():
        out.setdefault(era, {})[mode] = t["cycles_per_event"]
    return out


# ---------------------------------------------------------------------------
# A reviewer's own variant

def _differs(a: dict, b: dict) -> list:
    keys = ("intercepted", "fault", "root_source", "requests", "tlb_flushes")
    out = [k for k in keys if a[k] != b[k]]
    if [f["slot"] for f in a["freed"]] != [f["slot"] for f in b["freed"]]:
        out.append("freed")
    if len(a["destroyed"]) != len(b["destroyed"]):
        out.append("destroyed")
    return out


def library_diff(variant, base, modes=("shadow", "tdp"), vendor: str = "vmx") -> Table:
    """Every library scenario under ``base`` and ``variant``: the steps that
    differ in what KVM did (kernel calls aside).  Scenarios with no
    difference are left out; ``data`` maps (scenario, mode) to the differing
    step indices."""
    rows, data = [], {}
    for name in (n for n in library_names() if "/" not in n):
        sc = load_scenario(name)
        for mode in modes:
            a = run_scenario(sc, base, mode, vendor, trace=False)
            b = run_scenario(sc, variant, mode, vendor, trace=False)
            diff = {i: _differs(x, y) for i, (x, y) in enumerate(zip(a["steps"], b["steps"]))}
            diff = {i: f for i, f in diff.items() if f}
            if diff:
                data[(sc.name, mode)] = sorted(diff)
                what = sorted({f for fs in diff.values() for f in fs})
                built = f"{a['totals']['roots_allocated']} -> {b['totals']['roots_allocated']}"
                rows.append([sc.name, mode, ", ".join(map(str, sorted(diff))), ", ".join(what),
                             built])
    cols = ["scenario", "mode", "steps that differ", "what differs",
            f"root pages allocated: {_name(base)} -> {_name(variant)}"]
    return Table(cols, rows, f"{_name(variant)} against {_name(base)}", data)
