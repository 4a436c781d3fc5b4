"""Compare: one scenario under several eras and modes, step by step.

Root ids are per run and not comparable, so steps are compared on what they
did: whether they exited, faulted, where the root came from, which slots
were freed, how many roots were destroyed, which requests and flushes there
were, which kernel functions ran, what the architectural checker found (the
violations, and where an access's translation came from) and the role of the
root left current.  The text shows the values of every field that differs and
a diff of the kernel calls, after a one-paragraph summary.
"""
from __future__ import annotations

import difflib

from ..eras import get_era
from ..harness.render import event_label
from ..harness.scenario import Scenario
from ..harness.sim import run_scenario
from .cost import CONSTANTS, run_cost, step_cost

FIELDS = ("intercepted", "fault", "root_source", "freed", "destroyed", "requests",
          "tlb_flushes", "calls", "violations", "translation", "role")
# Fields the per-run line of the text shows already; the others get a line of their own.
IN_CELL = {"intercepted", "fault", "root_source", "freed", "destroyed", "tlb_flushes"}


def violation_text(v: dict) -> str:
    """A violation without run-specific ids: the address, the PCID and what was stale."""
    where = f"{v['addr']}" + (f" pcid {v['pcid']}" if v.get("pcid") not in (None, 0) else "")
    return f"vcpu {v['vcpu']} {where}: stale {v['stale']} (expected {v['expected']}) from {v['source']}"


def _summary(step: dict, mode: str) -> dict:
    root = step["root"]
    return {
        "intercepted": step["intercepted"],
        "fault": step["fault"],
        "root_source": step["root_source"],
        "freed": [f["slot"] for f in step["freed"]],
        "destroyed": len(step["destroyed"]),
        "requests": step["requests"],
        "tlb_flushes": step["tlb_flushes"],
        "calls": step["calls"],
        "call_depth": step["call_depth"],
        "violations": [violation_text(v) for v in step["violations"]],
        "translation": (step.get("translation") or {}).get("source"),
        "role": (root or {}).get("role"),
        "cost": step_cost(step, mode),
    }


def _comparable(field: str, per_run: list[dict]) -> list:
    """Each run's value of ``field``; roles only on the fields every run's era has."""
    values = [r[field] for r in per_run]
    if field != "role":
        return values
    common = set.intersection(*(set(v) for v in values if v is not None)) if any(values) else set()
    return [None if v is None else {k: v[k] for k in sorted(common)} for v in values]


def compare(scenario: Scenario, runs: list[tuple[str, str, str]]) -> dict:
    """Run ``scenario`` under each (era, mode, vendor) and line the steps up."""
    docs = [run_scenario(scenario, get_era(era), mode, vendor) for era, mode, vendor in runs]
    steps = []
    for i, ev in enumerate(scenario.events):
        per_run = [_summary(d["steps"][i], d["mode"]) for d in docs]
        differs = []
        for f in FIELDS:
            values = _comparable(f, per_run)
            if any(v != values[0] for v in values[1:]):
                differs.append(f)
        steps.append({"index": i, "vcpu": ev.get("vcpu", 0), "op": ev["op"],
                      "event": event_label(ev), "runs": per_run, "differs": differs})
    doc = {
        "contract": 1,
        "compare": scenario.name,
        "runs": [{"era": d["era"], "mode": d["mode"], "vendor": d["vendor"],
                  "inferred": d.get("inferred"), "totals": d["totals"],
                  "violations": sum(len(s["violations"]) for s in d["steps"]),
                  "cost_cycles": run_cost(d)} for d in docs],
        "cost_constants": dict(CONSTANTS),
        "steps": steps,
    }
    doc["summary"] = summary(doc)
    return doc


def _label(r: dict) -> str:
    return f"{r['era']}/{r['mode']}/{r['vendor']}"


def _spans(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def summary(doc: dict) -> str:
    """One paragraph: how each run differs from the first, and where violations are."""
    runs, steps = doc["runs"], doc["steps"]
    if not runs:
        return "no runs"
    base = _label(runs[0])
    n = len(steps)
    parts = []
    if len(runs) > 4:                   # many runs: where any of them differ
        diff = [s for s in steps if s["differs"]]
        fields = sorted({f for s in diff for f in s["differs"]}, key=FIELDS.index)
        parts.append(f"The {len(runs)} runs differ in {len(diff)} of {n} steps"
                     + (f" ({_spans([s['index'] for s in diff])}: {', '.join(fields)})" if diff else ""))
    for j, r in enumerate(runs[1:] if len(runs) <= 4 else [], 1):
        diff = {}
        for s in steps:
            fs = [f for f in FIELDS if _comparable(f, [s["runs"][0], s["runs"][j]])[0]
                  != _comparable(f, [s["runs"][0], s["runs"][j]])[1]]
            if fs:
                diff[s["index"]] = fs
        if not diff:
            parts.append(f"{_label(r)} does the same as {base} in all {n} steps")
            continue
        fields = sorted({f for fs in diff.values() for f in fs}, key=FIELDS.index)
        parts.append(f"{_label(r)} differs from {base} in {len(diff)} of {n} steps "
                     f"({_spans(sorted(diff))}: {', '.join(fields)})")
    found = [(r, [s["index"] for s in steps if s["runs"][j]["violations"]])
             for j, r in enumerate(runs)]
    with_v = [f"{_label(r)} at step{'s' if len(ix) > 1 else ''} {_spans(ix)}" for r, ix in found if ix]
    text = ("; ".join(parts) + ".") if parts else f"one run: {base}."
    if with_v:
        clean = [_label(r) for r, ix in found if not ix]
        text += " Stale translations: " + "; ".join(with_v)
        text += (f" (none in {', '.join(clean)})." if clean else ".")
    else:
        text += " No run lets the guest see a stale translation."
    return text


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


def _value_text(field: str, value) -> str:
    if field == "role":
        return "-" if value is None else " ".join(f"{k}={int(v) if isinstance(v, bool) else v}"
                                                 for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(value) if value else "-"
    return "-" if value is None else str(value)


def _groups(labels, values) -> list[tuple[object, list[str]]]:
    """Runs grouped by equal value, in order of first appearance."""
    out = []
    for label, v in zip(labels, values):
        for g in out:
            if g[0] == v:
                g[1].append(label)
                break
        else:
            out.append((v, [label]))
    return out


def _calls_lines(r: dict) -> list[str]:
    return ["  " * d + name for d, name in zip(r["call_depth"], r["calls"])]


def _step_details(s: dict, labels: list[str]) -> list[str]:
    """The values of each differing field not shown in the per-run lines, and a
    diff of the kernel calls of each distinct trace against the first."""
    lines = []
    for f in s["differs"]:
        if f in IN_CELL or f == "calls":
            continue
        values = _comparable(f, s["runs"])
        if f == "role":                 # only the role bits that differ
            keys = [k for k in next(v for v in values if v)
                    if len({None if v is None else v[k] for v in values}) > 1]
            values = [None if v is None else {k: v[k] for k in keys} for v in values]
        for v, who in _groups(labels, values):
            lines.append(f"    {f}: {_value_text(f, v)}   [{', '.join(who)}]")
    if "calls" in s["differs"]:
        groups = _groups(labels, [tuple(_calls_lines(r)) for r in s["runs"]])
        first, first_who = groups[0]
        for calls, who in groups[1:]:
            lines.append(f"    calls of {', '.join(who)} against {first_who[0]}:")
            for d in difflib.ndiff(list(first), list(calls)):
                if d[:1] in "+-":
                    lines.append(f"      {d[0]} {d[2:]}")
    return lines


def compare_table(doc: dict) -> str:
    """The comparison as text: the summary, per step one line per run and the
    values that differ, then the totals."""
    labels = [_label(r) for r in doc["runs"]]
    width = max(len(x) for x in labels)
    lines = [f"compare: {doc['compare']}   runs: {', '.join(labels)}", "",
             doc.get("summary") or summary(doc)]
    notes = _groups([r["era"] for r in doc["runs"]], [r.get("inferred") for r in doc["runs"]])
    for note, eras in notes:
        if note:
            lines.append(f"note: {', '.join(dict.fromkeys(eras))}: inferred: {note}")
    for s in doc["steps"]:
        mark = "  differs: " + " ".join(s["differs"]) if s["differs"] else "  (same everywhere)"
        lines.append(f"\nstep {s['index']}  vcpu {s['vcpu']}  {s['event']}{mark}")
        for r, label in zip(s["runs"], labels):
            stale = f"  STALE x{len(r['violations'])}" if r["violations"] else ""
            lines.append(f"  {label:<{width}}  {_cell(r)}{stale}")
        lines += _step_details(s, labels)
    lines.append("\ntotals:")
    keys = ["exits", "resets", "roots_allocated", "roots_destroyed", "cache_hits", "hash_hits",
            "tdp_reuses", "tlb_flushes", "violations"]
    head = f"  {'run':<{width}}  " + "  ".join(keys) + f"  {'est. cycles':>12}"
    lines.append(head)
    for r, label in zip(doc["runs"], labels):
        vals = "  ".join(f"{({**r['totals'], 'violations': r['violations']})[k]:>{len(k)}}" for k in keys)
        lines.append(f"  {label:<{width}}  {vals}  {r['cost_cycles']:>12,}")
    return "\n".join(lines)
