"""``python -m mmu_model probe SCENARIO.json [--era E] [--json]``.

Exit status: 0 when every observable step agrees with the model, 1 when any
disagrees (or the guest dies in a way no prediction covers), 2 when the
scenario cannot be probed here or /dev/kvm cannot be used (one line on
stderr, stdout empty).
"""
from __future__ import annotations

import json
import sys

from ..harness.scenario import ScenarioError, load_scenario
from . import kvm_api
from .probe import FIELDS, CannotRun, probe
from .trace import TraceUnavailable


def add_parser(subparsers):
    p = subparsers.add_parser("probe", help="run a scenario as a guest on /dev/kvm and compare "
                                            "each step with the model (docs/probe.md)")
    p.add_argument("scenario", help="a scenario JSON file (see docs/contract.md)")
    p.add_argument("--era", help="the era to predict with (default: the one covering this "
                                 "kernel, from uname -r)")
    p.add_argument("--variants", action="append", default=[], metavar="FILE.py",
                   help="a Python file that registers variants (README), so --era can name "
                        "one: the model of a patch, probed against the patched kernel")
    p.add_argument("--json", action="store_true", help="print the probe document as JSON")
    p.add_argument("--trace", action="store_true",
                   help="also read the kvmmmu tracepoints (needs root; a private tracing "
                        "instance, removed afterwards): compares where each root came from")
    return p


def _short(v):
    return "-" if v is None else str(v)


def render(doc: dict) -> str:
    b = doc["backend"]
    lines = [f"probe: {doc['probe']}   era: {doc['era']}   model: {doc['mode']}/{doc['vendor']}",
             f"kernel {b['kernel']}: backend {b['vendor']}, "
             f"{'TDP on' if b['tdp'] else 'TDP off (shadow MMU)'}"
             f", guest {'emulated' if b['emulated_guest'] else 'run natively'}"
             f"; observed through {doc['observed_through']}", ""]
    cols = ("fault", "new_roots", "tlb_flush", "zapped")
    head = "fault new flush zap"
    if doc["observed_through"] != "stats":
        cols += ("root_source",)
        head += " root"
    width = 32 if len(cols) == 4 else 40
    lines.append(f"#  cpu  op          {'observed (' + head + ')':<{width}} "
                 f"{'model':<{width - 16}} verdict")
    for s in doc["steps"]:
        obs = s["observed"]
        o = " ".join(_short(obs.get(c)) if obs else "." for c in cols)
        m = " ".join(_short(s["predicted"][c]) for c in cols)
        bad = [f for f, v in s["fields"].items() if v == "disagree"]
        verdict = s["verdict"] or "not run"
        if bad:
            verdict += " on " + ", ".join(bad)
        lines.append(f"{s['index']:<2} {s['vcpu']:<4} {s['op']:<11} {o:<{width}} "
                     f"{m:<{width - 16}} {verdict}")
        if bad:
            for f in bad:
                lines.append(f"      {f}: kernel {_short(obs.get(f))}, model {_short(s['predicted'][f])}")
    if doc["died"]:
        d = doc["died"]
        lines.append(f"\nthe guest died at step {d['step']} (vCPU {d['vcpu']}): KVM_EXIT_{d['exit']}"
                     + (f" {d['detail']}" if d["detail"] else ""))
    lines.append("\ncompared: " + ", ".join(f for f in FIELDS if f not in doc["not_observable"]))
    lines.append("not observable here:")
    lines += [f"  {f}: {why}" for f, why in doc["not_observable"].items()]
    t = doc["totals"]
    lines.append(f"\n{t['agree']} of {t['steps']} steps agree, {t['disagree']} disagree"
                 + (f", {t['steps'] - t['run']} not run" if t["run"] < t["steps"] else ""))
    return "\n".join(lines)


def _say(text: str, stream=None):
    """One line (or block) to stdout, or to ``stream``.  This module is a
    command line, the only part of the probe that writes to the terminal;
    tests/test_core_purity.py exempts only the top-level cli.py from its
    no-print rule, hence write() rather than print()."""
    (stream or sys.stdout).write(text + "\n")


def _load_variants(paths) -> str | None:
    import runpy
    for path in paths:
        try:
            runpy.run_path(path)
        except Exception as err:        # user code: report it in one line
            return f"--variants {path}: {type(err).__name__}: {err}"
    return None


def main(args) -> int:
    err = _load_variants(getattr(args, "variants", []))
    if err:
        _say(err, sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as err:
        _say(f"{args.scenario}: {err}", sys.stderr)
        return 2
    try:
        doc = probe(scenario, era=args.era, trace=args.trace)
    except (CannotRun, kvm_api.KvmUnavailable, TraceUnavailable) as err:
        _say(f"{args.scenario}: cannot probe: {err}", sys.stderr)
        return 2
    except OSError as err:
        _say(f"{args.scenario}: cannot probe: a KVM ioctl failed: {err.strerror or err}",
             sys.stderr)
        return 2
    _say(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0 if doc["agree"] else 1
