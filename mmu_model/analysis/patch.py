"""A patch's whole effect: a variant against its base, over the library and a search.

``review(variant, baseline)`` runs both eras over every library scenario (in
each of the given modes; the nested scenarios in nested-tdp) and a seeded
search of random guest programs, and reports:

* what the patch changes: the mirrored functions it replaces and the era
  fields it sets;
* coverage: how often each replaced function ran, by which events, in the
  library and in the search (a patch the programs never reach is untested);
* the steps where the two differ (compare's fields), with both sides' values;
* the violations only one side has: in the library, and from the search the
  shortest reproduction (in both directions: the patch may also fix one);
* invariant breaks (harness/invariants.py) on either side: a root serving a
  role it was not built for, a refcount that does not match its references.

It returns data (a notebook cell can show it) and :func:`review_text`
renders it for the command line (``python -m mmu_model review``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import fields, replace

from ..eras import Era, get_era
from ..eras.era import DERIVE_FIXED
from ..harness.invariants import check_invariants
from ..harness.render import event_label
from ..harness.scenario import library_names, load_scenario
from ..harness.sim import Simulation
from .compare import FIELDS, _comparable, _summary, violation_text
from .search import find_violation, reproduction

MODES = ("shadow", "tdp", "tdp-legacy")
SHOW = 12                           # differing steps the text lists before "... N more"


def changes(variant: Era, base: Era) -> dict:
    """The functions the variant replaces and the era fields it sets, against ``base``."""
    funcs = sorted(k for k, fn in variant.overrides.items() if base.overrides.get(k) is not fn)
    data = sorted(f.name for f in fields(Era) if f.name not in DERIVE_FIXED
                  and getattr(variant, f.name) != getattr(base, f.name))
    out = {"functions": funcs, "fields": data}
    if variant.suppress_request and variant.suppress_request != base.suppress_request:
        fn, action = variant.suppress_request
        out["ablation"] = f"{fn}() without its {action}"
    return out


class _Coverage:
    """Counts calls of the replaced functions, by the event being stepped."""

    def __init__(self, names):
        self.names = set(names)
        self.op = None
        self.calls: Counter = Counter()         # (function, op) -> calls

    def wrap(self, era: Era) -> Era:
        inner = era.op_wrapper

        def wrapper(core_name, fn):
            if inner is not None:
                fn = inner(core_name, fn)
            if core_name not in self.names:
                return fn

            def counted(*args, **kwargs):
                self.calls[(core_name, self.op)] += 1
                return fn(*args, **kwargs)
            return counted
        return replace(era, op_wrapper=wrapper)

    def by_function(self) -> dict:
        out = {n: {"calls": 0, "by_event": {}} for n in sorted(self.names)}
        for (name, op), n in sorted(self.calls.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            out[name]["calls"] += n
            out[name]["by_event"][op or "program"] = out[name]["by_event"].get(op or "program", 0) + n
        return out


def _run(era, sc, mode, vendor, coverage=None) -> tuple[list, list]:
    """Step ``sc`` under ``era``: the step outcomes and the invariant breaks."""
    sim = Simulation(era, mode, vendor, sc.vcpus, sc.start)
    steps, breaks = [], []
    for ev in sc.events:
        if coverage is not None:
            coverage.op = ev["op"]
        steps.append(sim.step(ev))
        for problem in check_invariants(sim.kvm):
            breaks.append({"step": len(steps) - 1, "problem": problem})
    return steps, breaks


def _library(variant, base, modes, vendor, coverage) -> dict:
    diffs, only, breaks, runs = [], [], [], 0
    for name in library_names():
        sc = load_scenario(name)
        for mode in (("nested-tdp",) if sc.mode == "nested-tdp" else modes):
            runs += 1
            a, a_breaks = _run(base, sc, mode, vendor)
            b, b_breaks = _run(variant, sc, mode, vendor, coverage)
            for side, found in (("base", a_breaks), ("variant", b_breaks)):
                breaks += [{"scenario": name, "mode": mode, "side": side, **x} for x in found]
            for i, (x, y) in enumerate(zip(a, b)):
                pair = [_summary(x, mode), _summary(y, mode)]
                differ = [f for f in FIELDS if len(set(map(repr, _comparable(f, pair)))) > 1]
                if not differ:
                    continue
                ev = sc.events[i]
                values = {f: _comparable(f, pair) for f in differ}
                if "role" in values:            # only the role bits that differ
                    a, b = values["role"]
                    keys = [k for k in (a or b) if (a or {}).get(k) != (b or {}).get(k)]
                    values["role"] = [None if r is None else {k: r[k] for k in keys} for r in (a, b)]
                diffs.append({"scenario": name, "mode": mode, "step": i, "event": event_label(ev),
                              "fields": differ,
                              "base": {f: v[0] for f, v in values.items()},
                              "variant": {f: v[1] for f, v in values.items()}})
                for side, mine, other in (("variant", pair[1], pair[0]), ("base", pair[0], pair[1])):
                    new = [v for v in mine["violations"] if v not in other["violations"]]
                    only += [{"scenario": name, "mode": mode, "step": i, "event": event_label(ev),
                              "side": side, "violation": v} for v in new]
    return {"runs": runs, "differences": diffs, "violations_only": only, "invariant_breaks": breaks}


def _search(variant, base, modes, vendor, examples, seed, coverage) -> list[dict]:
    rows = []
    for mode in modes:
        coverage.op = None
        for side, era, other in (("variant", variant, base), ("base", base, variant)):
            found, n = find_violation(era, mode, vendor, examples=examples, seed=seed, baseline=other)
            row = {"mode": mode, "side": side, "programs": n, "found": found is not None}
            if found is not None:
                repro = reproduction(era.name, mode, vendor, found)
                row["reproduction"] = repro
                row["violation"] = violation_text(found[2][1][0])
            rows.append(row)
    return rows


def review(variant, baseline=None, modes=MODES, vendor: str = "vmx", examples: int = 2000,
           seed: int = 0) -> dict:
    """The variant against ``baseline`` (default: the era it was derived from)."""
    v = get_era(variant) if isinstance(variant, str) else variant
    if baseline is None and v.parent is None:
        raise ValueError(f"{v.name} is not a variant: name a baseline")
    base = get_era(baseline or v.parent) if not isinstance(baseline, Era) else baseline
    what = changes(v, base)
    coverage = _Coverage(what["functions"])
    counted = coverage.wrap(v)
    library = _library(counted, base, modes, vendor, coverage)
    reached_library = coverage.by_function()
    coverage.calls.clear()
    search = _search(counted, base, modes, vendor, examples, seed, coverage)
    reached_search = coverage.by_function()
    return {"variant": v.name, "baseline": base.name, "modes": list(modes), "vendor": vendor,
            "examples": examples, "seed": seed, "changes": what,
            "coverage": {"library": reached_library, "search": reached_search},
            "library": library, "search": search}


def _cov_line(name, lib, srch) -> str:
    by = ", ".join(f"{op} x{n}" for op, n in sorted(lib["by_event"].items(), key=lambda kv: -kv[1]))
    text = f"  {name}: {lib['calls']} calls in the library" + (f" ({by})" if by else "")
    text += f", {srch['calls']} in the search"
    if not lib["calls"] and not srch["calls"]:
        text += "  <- never reached: nothing below tests it"
    return text


def review_text(doc: dict) -> str:
    """The review as text: what changed, coverage, differences, violations, breaks."""
    lines = [f"review: {doc['variant']} against {doc['baseline']}   modes: {', '.join(doc['modes'])}"
             f"   vendor: {doc['vendor']}   search: {doc['examples']} programs per mode and side, "
             f"seed {doc['seed']}", ""]
    ch = doc["changes"]
    lines.append("changes: " + ("; ".join(filter(None, [
        ("functions " + ", ".join(ch["functions"])) if ch["functions"] else "",
        ("era fields " + ", ".join(ch["fields"])) if ch["fields"] else "",
        ("an ablation: " + ch["ablation"]) if ch.get("ablation") else ""])) or "none"))
    if ch["functions"]:
        lines.append("coverage:")
        for name in ch["functions"]:
            lines.append(_cov_line(name, doc["coverage"]["library"][name], doc["coverage"]["search"][name]))
    lib = doc["library"]
    diffs = lib["differences"]
    scen = sorted({(d["scenario"], d["mode"]) for d in diffs})
    lines.append(f"\nlibrary: {lib['runs']} runs (scenario x mode); the variant differs in "
                 f"{len(diffs)} steps of {len(scen)} runs")
    shown = diffs[:SHOW]
    for d in shown:
        lines.append(f"  {d['scenario']}/{d['mode']} step {d['step']} {d['event']}: "
                     + ", ".join(d["fields"]))
        for f in d["fields"]:
            if f == "calls":
                continue
            lines.append(f"      {f}: {doc['baseline']}: {_short(d['base'][f])} | "
                         f"{doc['variant']}: {_short(d['variant'][f])}")
    if len(diffs) > SHOW:
        rest = sorted({f"{d['scenario']}/{d['mode']}" for d in diffs[SHOW:]})
        lines.append(f"  ... {len(diffs) - SHOW} more steps (--json has them all), in: " + ", ".join(rest))
    lines.append("\nstale translations only one side lets the guest see:")
    only = lib["violations_only"]
    for o in only:
        who = doc["variant"] if o["side"] == "variant" else doc["baseline"]
        lines.append(f"  library {o['scenario']}/{o['mode']} step {o['step']} ({who}): {o['violation']}")
    for r in doc["search"]:
        who = doc["variant"] if r["side"] == "variant" else doc["baseline"]
        if r["found"]:
            evs = "; ".join(event_label_raw(e) for e in r["reproduction"]["events"])
            lines.append(f"  search {r['mode']} ({who}, after {r['programs']} programs): "
                         f"{r['violation']}\n      shortest: start {r['reproduction']['start']}: {evs}")
    quiet = [f"{r['mode']}/{r['side']}" for r in doc["search"] if not r["found"]]
    if not only and not any(r["found"] for r in doc["search"]):
        lines.append("  none found")
    if quiet:
        lines.append(f"  (no violation in {doc['examples']} programs for {', '.join(quiet)}: "
                     "finding none is not a proof)")
    breaks = lib["invariant_breaks"]
    lines.append(f"\ninvariant breaks: {len(breaks) or 'none'}")
    for b in breaks[:20]:
        lines.append(f"  {b['scenario']}/{b['mode']} step {b['step']} ({b['side']}): {b['problem']}")
    if len(breaks) > 20:
        lines.append(f"  ... and {len(breaks) - 20} more")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in value.items())
    return "-" if value is None else str(value)


def event_label_raw(ev: dict) -> str:
    """A reproduction's event as written in the scenario file."""
    return " ".join([ev["op"]] + [f"{k}={'+'.join(v) if isinstance(v, list) else v}"
                                  for k, v in ev.items() if k != "op"])
