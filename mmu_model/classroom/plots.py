"""Charts for the notebooks: root lifetimes, and counts per era, mode and vCPU count.

Plot functions take a matplotlib ``ax`` and return the artists they drew;
they never create figures or call ``show()``.  The table builders next to
them are pure (they run the model and return dicts) so a notebook cell stays
one line.
"""
from __future__ import annotations

import random

from ..harness.sim import Simulation

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
FLUSH_MARKERS = {"current": "v", "guest": "s", "all": "D", "gva": "."}


# ---------------------------------------------------------------------------
# Root lifetimes

def root_lifetimes(outcomes: list[dict]) -> dict:
    """{root id: [(first step held, step it was dropped or None), ...]}.

    A root is held while some vCPU's slot (current or prev) points at it, as
    each outcome reports the acting vCPU's slots; a root dropped and found
    again later (the shadow-page hash) gets a second interval.  Roots a vCPU
    held before its first step start at -1.
    """
    held: dict[int, set] = {}
    open_at: dict[int, int] = {}
    spans: dict[int, list] = {}
    for s in outcomes:
        if s["fault"]:
            continue
        first = s["vcpu"] not in held
        now = {r["id"] for r in [s["root"]] + s["prev_roots"] if r}
        freed = {f["id"] for f in s["freed"]}
        for rid in freed - set(open_at):        # held since before the first step
            open_at[rid] = -1
        held[s["vcpu"]] = now
        after = set().union(*held.values())
        for rid in list(open_at):
            if rid not in after:
                spans.setdefault(rid, []).append((open_at.pop(rid), s["index"]))
        for rid in sorted(after - set(open_at)):
            built = s["root"] and rid == s["root"]["id"] and s["root_source"] != "same"
            open_at[rid] = -1 if first and not built and rid not in spans else s["index"]
    for rid, start in open_at.items():
        spans.setdefault(rid, []).append((start, None))
    return dict(sorted(spans.items()))


def plot_timeline(ax, outcomes: list[dict]) -> list:
    """One horizontal bar per root id, from the step it is first held to the
    step it is freed (open-ended if still held); destroyed roots end in an
    ✕; TLB flushes are markers on a row of their own."""
    artists = []
    spans = root_lifetimes(outcomes)
    end = len(outcomes)
    destroyed = {rid: s["index"] for s in outcomes for rid in s["destroyed"]}
    ids = list(spans)
    for row, rid in enumerate(ids, start=1):
        for start, stop in spans[rid]:
            x0, x1 = start + 0.5, (stop + 0.5 if stop is not None else end + 0.5)
            artists.append(ax.barh(row, x1 - x0, left=x0, height=0.6,
                                   color=PALETTE[0] if stop is None else PALETTE[5],
                                   edgecolor="black", linewidth=0.6,
                                   hatch="" if stop is None else "//"))
        if rid in destroyed:
            artists += ax.plot([destroyed[rid] + 0.5], [row], marker="X", markersize=10,
                               color=PALETTE[3], linestyle="none")
    labels = set()
    for s in outcomes:
        for k, kind in enumerate(s["tlb_flushes"]):
            lab = None if kind in labels else f"flush: {kind}"
            labels.add(kind)
            artists += ax.plot([s["index"] + 0.5 + 0.12 * k], [0],
                               marker=FLUSH_MARKERS.get(kind, "o"), color=PALETTE[1],
                               markeredgecolor="black", linestyle="none", label=lab)
    ax.set_yticks(range(len(ids) + 1), ["TLB flushes"] + [f"root #{i}" for i in ids])
    ax.set_xlim(-0.5, end + 0.5)
    ax.set_ylim(-0.7, len(ids) + 0.7)
    ax.set_xlabel("step (a bar spans the steps a root is held in a slot)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    if labels:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  borderaxespad=0)
    return artists


# ---------------------------------------------------------------------------
# Counts

def plot_counts(ax, table: dict, ylabel: str = "", xlabel: str = "") -> list:
    """Grouped bars: ``table`` maps a row label (x) to {series label: value}.
    Each series has its own colour and hatch, and its values are written on
    the bars."""
    rows = list(table)
    series = list(dict.fromkeys(k for r in rows for k in table[r]))
    width = 0.8 / max(1, len(series))
    artists = []
    for j, name in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        vals = [table[r].get(name, 0) for r in rows]
        bars = ax.bar(xs, vals, width, label=str(name), color=PALETTE[j % len(PALETTE)],
                      hatch=HATCHES[j % len(HATCHES)], edgecolor="black", linewidth=0.6)
        artists.append(bars)
        artists += ax.bar_label(bars, fontsize="x-small")
    ax.set_xticks(range(len(rows)), [str(r) for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    return artists


def counts_table(scenario, eras, modes, metric="roots_allocated", vendor="vmx") -> dict:
    """{era: {mode: totals[metric]}} for one parsed scenario."""
    from ..harness.sim import run_scenario
    return {era: {mode: run_scenario(scenario, era, mode, vendor, trace=False)["totals"][metric]
                  for mode in modes} for era in eras}


def workload(seed: int, n: int, vcpus: int) -> list[dict]:
    """A seeded guest: mostly MOV CR3 among five PCIDs, with CR0.WP pairs
    (kernel writes), CR4.PGE pairs, INVLPG and SMI/RSM pairs, on random vCPUs."""
    rng = random.Random(seed)
    spaces = [0x1000 * (i + 1) | i for i in range(5)]
    events = []
    while len(events) < n:
        v = rng.randrange(vcpus)
        r = rng.random()
        if r < 0.6:
            evs = [{"op": "mov_cr3", "value": rng.choice(spaces) | (rng.random() < 0.5) << 63}]
        elif r < 0.8:
            evs = [{"op": "mov_cr0", "clear": ["WP"]}, {"op": "mov_cr0", "set": ["WP"]}]
        elif r < 0.88:
            evs = [{"op": "mov_cr4", "clear": ["PGE"]}, {"op": "mov_cr4", "set": ["PGE"]}]
        elif r < 0.97:
            evs = [{"op": "invlpg", "addr": 0x1000 * rng.randrange(1, 512)}]
        else:
            evs = [{"op": "smi"}, {"op": "rsm"}]
        events += [{**e, "vcpu": v} for e in evs]
    return events[:n]


def vcpu_table(eras, vcpu_counts, mode="tdp", seed=1, n=200, metric="roots_allocated",
               start="long-mode-pcid", vendor="vmx") -> dict:
    """{vCPU count: {era: totals[metric]}} for the seeded workload."""
    out = {}
    for k in vcpu_counts:
        events = workload(seed, n, k)
        row = {}
        for era in eras:
            sim = Simulation(era, mode, vendor, k, start, trace=False)
            for ev in events:
                sim.apply(ev)
            row[era] = sim.totals()[metric]
        out[k] = row
    return out
