"""The command line: ``python -m mmu_model run|compare|eras``.

Invalid input exits 2 with one line naming the file and the JSON path;
a guest fault is a result, not an error.
"""
from __future__ import annotations

import argparse
import json
import sys

from .eras import DEFAULT_ERA, all_eras, get_era
from .render import eras_table, step_graph, step_table
from .scenario import MODES, VENDORS, ScenarioError, load_scenario
from .sim import run_scenario


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmu_model",
                                description="Model of KVM x86 MMU root management, per kernel era.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario file and print its outcome")
    run.add_argument("scenario", help="a scenario JSON file (see docs/contract.md)")
    run.add_argument("--era", help=f"kernel era (default: the scenario's, else {DEFAULT_ERA})")
    run.add_argument("--mode", choices=MODES, help="override the scenario's MMU mode")
    run.add_argument("--vendor", choices=VENDORS, help="override the scenario's vendor")
    run.add_argument("--json", action="store_true", help="print the contract-1 JSON outcome")
    run.add_argument("--trace", action="store_true",
                     help="after the table, print each step's kernel calls (function_graph)")
    run.add_argument("--variants", action="append", default=[], metavar="FILE.py",
                     help="a Python file that registers variants (see README), so --era can name them")
    cmp_ = sub.add_parser("compare", help="run a scenario under several eras/modes and show "
                                          "where the steps differ")
    cmp_.add_argument("scenario", help="a scenario JSON file")
    cmp_.add_argument("--era", action="append", required=True,
                      help="an era or registered variant (repeat: --era v5.17 --era v6.18)")
    cmp_.add_argument("--mode", action="append", choices=MODES,
                      help="one or more modes (repeatable; default: the scenario's)")
    cmp_.add_argument("--vendor", action="append", choices=VENDORS,
                      help="one or more vendors (repeatable; default: the scenario's)")
    cmp_.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp_.add_argument("--variants", action="append", default=[], metavar="FILE.py",
                      help="a Python file that registers variants, so --era can name them")
    eras = sub.add_parser("eras", help="list the eras: name, kernel range, what defines them")
    eras.add_argument("-v", "--verbose", action="store_true", help="also list each source in full")
    return p


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def load_variants(paths) -> str | None:
    """Run each variants file (it calls register_era); an error message or None."""
    import runpy
    for path in paths:
        try:
            runpy.run_path(path)
        except Exception as err:        # the file is user code: report, never a traceback
            return f"--variants {path}: {type(err).__name__}: {err}"
    return None


def cmd_run(args) -> int:
    err = load_variants(args.variants)
    if err:
        return _fail(err)
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as err:
        return _fail(f"{args.scenario}: {err}")
    era_name = args.era or scenario.era or DEFAULT_ERA
    try:
        era = get_era(era_name)
    except KeyError as err:
        where = "--era" if args.era else f"{args.scenario}: era"
        return _fail(f"{where}: {err.args[0]}")
    try:
        doc = run_scenario(scenario, era, args.mode, args.vendor)
    except ScenarioError as err:
        return _fail(f"{args.scenario}: {err}")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(step_table(doc, scenario.events))
    if args.trace:
        for s in doc["steps"]:
            print(f"\n--- step {s['index']} ({s['op']}) ---")
            print(step_graph(s) or "(no VM exit: KVM ran nothing)")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, compare_table
    err = load_variants(args.variants)
    if err:
        return _fail(err)
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as err:
        return _fail(f"{args.scenario}: {err}")
    for name in args.era:
        try:
            get_era(name)
        except KeyError as err:
            return _fail(f"--era: {err.args[0]}")
    runs = [(e, m, v) for e in args.era for m in (args.mode or [scenario.mode])
            for v in (args.vendor or [scenario.vendor])]
    try:
        doc = compare(scenario, runs)
    except ScenarioError as err:
        return _fail(f"{args.scenario}: {err}")
    print(json.dumps(doc, indent=2) if args.json else compare_table(doc))
    return 0


def cmd_eras(args) -> int:
    print(eras_table(all_eras(), args.verbose))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return {"run": cmd_run, "compare": cmd_compare, "eras": cmd_eras}[args.command](args)
