"""Compare: one scenario under several eras and modes, step by step.

Root ids are per run and not comparable, so steps are compared on what they
did: whether they exited, faulted, where the root came from, which slots
were freed, how many roots were destroyed, which requests and flushes there
were, and which kernel functions ran.
"""
from __future__ import annotations

from ..eras import get_era
from ..harness.render import event_label
from ..harness.scenario import Scenario
from ..harness.sim import run_scenario
from .cost import CONSTANTS, run_cost, step_cost

FIELDS = ("intercepted", "fault", "root_source", "freed", "destroyed", "requests",
          "tlb_flushes", "calls")


def _summary(step: dict, mode: str) -> dict:
    return {
        "intercepted": step["intercepted"],
        "fault": step["fault"],
        "root_source": step["root_source"],
        "freed": [f["slot"] for f in step["freed"]],
        "destroyed": len(step["destroyed"]),
        "requests": step["requests"],
        "tlb_flushes": step["tlb_flushes"],
        "calls": step["calls"],
        "cost": step_cost(step, mode),
    }


def compare(scenario: Scenario, runs: list[tuple[str, str, str]]) -> dict:
    """Run ``scenario`` under each (era, mode, vendor) and line the steps up."""
    docs = [run_scenario(scenario, get_era(era), mode, vendor) for era, mode, vendor in runs]
    steps = []
    for i, ev in enumerate(scenario.events):
        per_run = [_summary(d["steps"][i], d["mode"]) for d in docs]
        differs = [f for f in FIELDS if any(r[f] != per_run[0][f] for r in per_run[1:])]
        steps.append({"index": i, "vcpu": ev.get("vcpu", 0), "op": ev["op"],
                      "event": event_label(ev), "runs": per_run, "differs": differs})
    return {
        "contract": 1,
        "compare": scenario.name,
        "runs": [{"era": d["era"], "mode": d["mode"], "vendor": d["vendor"],
                  "inferred": d.get("inferred"), "totals": d["totals"],
                  "cost_cycles": run_cost(d)} for d in docs],
        "cost_constants": dict(CONSTANTS),
        "steps": steps,
    }


def _cell(r: dict) -> str:
    if r["fault"]:
        return f"#{r['fault']}"
    if not r["intercepted"]:
        return "no exit"
    parts = [r["root_source"]]
    if r["freed"]:
        parts.append("freed " + ",".join(r["freed"]))
    if r["destroyed"]:
        parts.append(f"destroyed {r['destroyed']}")
    if r["tlb_flushes"]:
        parts.append("flush " + ",".join(r["tlb_flushes"]))
    return "  ".join(parts)


def compare_table(doc: dict) -> str:
    """The comparison as text: per step, one line per run, then the totals."""
    labels = [f"{r['era']}/{r['mode']}/{r['vendor']}" for r in doc["runs"]]
    width = max(len(x) for x in labels)
    lines = [f"compare: {doc['compare']}   runs: {', '.join(labels)}"]
    for r, label in zip(doc["runs"], labels):
        if r.get("inferred"):
            lines.append(f"note: {label}: inferred: {r['inferred']}")
    for s in doc["steps"]:
        mark = "  differs: " + " ".join(s["differs"]) if s["differs"] else "  (same everywhere)"
        lines.append(f"\nstep {s['index']}  vcpu {s['vcpu']}  {s['event']}{mark}")
        for r, label in zip(s["runs"], labels):
            lines.append(f"  {label:<{width}}  {_cell(r)}")
    lines.append("\ntotals:")
    keys = ["exits", "resets", "roots_allocated", "roots_destroyed", "cache_hits", "hash_hits",
            "tdp_reuses", "tlb_flushes"]
    head = f"  {'run':<{width}}  " + "  ".join(keys) + f"  {'est. cycles':>12}"
    lines.append(head)
    for r, label in zip(doc["runs"], labels):
        vals = "  ".join(f"{r['totals'][k]:>{len(k)}}" for k in keys)
        lines.append(f"  {label:<{width}}  {vals}  {r['cost_cycles']:>12,}")
    return "\n".join(lines)
