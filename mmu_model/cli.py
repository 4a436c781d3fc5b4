"""The command line: ``python -m mmu_model run|compare|check|ablate|review|quiz|eras``.

Invalid input of any kind (a scenario, an argument, a --variants file that
fails) exits 2 with one line on stderr naming what is wrong and where, and
nothing on stdout; a guest fault is a result, not an error.  Work is bounded:
the limits (MAX_EVENTS, MAX_EXAMPLES, ...) are checked before it starts.
"""
from __future__ import annotations

import json
import os
import sys

from .eras import DEFAULT_ERA, all_eras, get_era
from .harness.render import eras_table, step_graph, step_table
from .harness.scenario import (
    MAX_EVENTS,
    MODES,
    VENDORS,
    OneLineParser,
    ScenarioError,
    load_scenario,
    one_line,
    read_bytes,
)
from .harness.sim import run_scenario


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m mmu_model",
                      description="Model of KVM x86 MMU root management, per kernel era.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario file and print its outcome")
    run.add_argument("scenario", help="a scenario JSON file (see docs/contract.md)")
    run.add_argument("--era", help=f"kernel era (default: the scenario's, else {DEFAULT_ERA})")
    run.add_argument("--mode", choices=MODES, help="override the scenario's MMU mode")
    run.add_argument("--vendor", choices=VENDORS, help="override the scenario's vendor")
    out = run.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the contract-1 JSON outcome "
                     "(written step by step as the steps run)")
    out.add_argument("--jsonl", action="store_true", help="one JSON object per line: the run's "
                     "parameters, each step, then the totals (see docs/contract.md)")
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
    chk = sub.add_parser("check", help="search random guest programs for a stale translation; "
                                        "print the shortest as a scenario (exit 1) or exit 0")
    chk.add_argument("--era", default=DEFAULT_ERA, help="era or registered variant")
    chk.add_argument("--mode", choices=MODES, default="shadow")
    chk.add_argument("--vendor", choices=VENDORS, default="vmx")
    chk.add_argument("--examples", type=int, default=1000, help="programs to try (default 1000)")
    chk.add_argument("--seed", type=int, default=0)
    chk.add_argument("--baseline", metavar="ERA",
                     help="count only violations this era does not show on the same program")
    chk.add_argument("--flush-on-reuse", action="store_true",
                     help="run with force_flush_and_sync_on_reuse=1 (see docs/findings.md)")
    chk.add_argument("--variants", action="append", default=[], metavar="FILE.py")
    chk.add_argument("--jobs", type=int, default=1,
                     help="processes to search with (default 1: one search's programs depend on "
                          "each other, so more replay more; see benchmarks/RESULTS.md); "
                          "same answer for any")
    abl = sub.add_parser("ablate", help="remove each root unload / flush request in turn and "
                                        "search for violations")
    abl.add_argument("--era", default=DEFAULT_ERA)
    abl.add_argument("--mode", action="append", choices=MODES,
                     help="modes (repeatable; default: shadow, tdp, tdp-legacy, nested-tdp)")
    abl.add_argument("--vendor", choices=VENDORS, default="vmx")
    abl.add_argument("--examples", type=int, default=1000, help="programs per row (default 1000)")
    abl.add_argument("--json", action="store_true")
    abl.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                     help="processes to search with (default: every core); same table for any")
    abl.add_argument("--variants", action="append", default=[], metavar="FILE.py",
                     help="a Python file that registers variants; a variant is ablated with "
                          "its parent era's decision list")
    rev = sub.add_parser("review", help="a variant against its base: the library, a search, "
                                         "coverage, invariants")
    rev.add_argument("--era", required=True, help="the variant (registered by --variants)")
    rev.add_argument("--baseline", metavar="ERA", help="default: the era the variant derives from")
    rev.add_argument("--mode", action="append", choices=MODES,
                     help="modes (repeatable; default: shadow, tdp, tdp-legacy)")
    rev.add_argument("--vendor", choices=VENDORS, default="vmx")
    rev.add_argument("--examples", type=int, default=2000,
                     help="random programs per mode and side (default 2000)")
    rev.add_argument("--seed", type=int, default=0)
    rev.add_argument("--json", action="store_true")
    rev.add_argument("--variants", action="append", default=[], metavar="FILE.py")
    sub.add_parser("quiz", help="seeded questions: -s SEED [-n N] [-c] [--key] (see quiz -h)")
    from .probe.cli import add_parser as add_probe_parser
    add_probe_parser(sub)
    eras = sub.add_parser("eras", help="list the eras: name, kernel range, what defines them")
    eras.add_argument("-v", "--verbose", action="store_true", help="also list each source in full")
    return p


def _fail(message: str) -> int:
    print(one_line(message)[:2000], file=sys.stderr)
    return 2


_VARIANT_FILES: dict[str, str] = {}     # absolute path -> as given, for errors at run time


def load_variants(paths) -> str | None:
    """Run each variants file (it calls register_era); an error message or None."""
    import runpy
    for path in paths:
        try:                            # a FIFO or a device would block or never end
            read_bytes(path)
        except ScenarioError as err:
            return f"--variants {path}: {err.message}"
        _VARIANT_FILES[os.path.abspath(path)] = path
        try:
            runpy.run_path(path)
        except BaseException as err:    # user code, even sys.exit(): report, never a traceback
            return _variant_error(err, path, "the file")
    return None


def _variant_error(err: BaseException, path: str, who: str) -> str:
    """One line for an exception (or sys.exit) out of a --variants file."""
    where = ""
    for frame, line in _tb_frames(err):
        if os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path):
            where = f" (line {line}, in {frame.f_code.co_name})"
    if isinstance(err, SystemExit):
        what = f"called sys.exit({err.code!r})"
    else:
        what = f"raised {type(err).__name__}" + (f": {err}" if str(err) else "")
    return f"--variants {path}: {who} {what}{where}"


def _tb_frames(err):
    tb = err.__traceback__
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def _from_variant(err: BaseException, command: str) -> str | None:
    """The error line if ``err`` came out of a loaded --variants file (its
    override raised, or called sys.exit, while the model ran), else None."""
    step = None
    for frame, _line in _tb_frames(err):
        me = frame.f_locals.get("self")
        if frame.f_code.co_name == "step" and hasattr(me, "steps_run") and hasattr(me, "kvm"):
            step = me.steps_run
    for frame, _line in reversed(list(_tb_frames(err))):
        path = _VARIANT_FILES.get(os.path.abspath(frame.f_code.co_filename))
        if path is not None:
            at = f" at events[{step}]" if step is not None and command in ("run", "compare") else ""
            return _variant_error(err, path, "the variant") + at
    return None


def _unknown_era(names, where="--era") -> str | None:
    """None if every name is an era, else the error line for the first that is not."""
    for name in names:
        try:
            get_era(name)
        except KeyError as err:
            return f"{where}: {err.args[0]}"
    return None


def _load(args):
    """(scenario, None) or (None, error line) after loading --variants files."""
    err = load_variants(getattr(args, "variants", []))
    if err:
        return None, err
    try:
        return load_scenario(args.scenario), None
    except ScenarioError as err:
        return None, f"{args.scenario}: {err}"


def cmd_run(args) -> int:
    if args.json or args.jsonl:
        return _run_streamed(args)
    scenario, err = _load(args)
    if err:
        return _fail(err)
    era_name = args.era or scenario.era or DEFAULT_ERA
    err = _unknown_era([era_name], "--era" if args.era else f"{args.scenario}: era")
    if err:
        return _fail(err)
    try:
        doc = run_scenario(scenario, get_era(era_name), args.mode, args.vendor, invariants=True)
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


def _run_streamed(args) -> int:
    """run --json / --jsonl: validate the whole file, then write each step as
    it runs, keeping none of them (memory does not grow with the events)."""
    from .harness.sim import stream_scenario
    from .harness.stream import open_stream, write_json, write_jsonl
    err = load_variants(args.variants)
    if err:
        return _fail(err)
    try:
        stream = open_stream(args.scenario)
    except ScenarioError as err:
        return _fail(f"{args.scenario}: {err}")
    scenario = stream.scenario
    era_name = args.era or scenario.era or DEFAULT_ERA
    err = _unknown_era([era_name], "--era" if args.era else f"{args.scenario}: era")
    if err:
        return _fail(err)
    try:
        head, steps, tail = stream_scenario(scenario, stream.events(), get_era(era_name),
                                            args.mode, args.vendor, invariants=True)
    except ScenarioError as err:
        return _fail(f"{args.scenario}: {err}")
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None) or _TextSink(sys.stdout)   # a captured stdout has no buffer
    (write_json if args.json else write_jsonl)(out, head, steps, tail)
    out.flush()
    return 0


class _TextSink:
    """A binary writer over a text stream (stdout replaced by one, in tests)."""

    def __init__(self, text):
        self.text = text

    def write(self, data: bytes):
        self.text.write(data.decode("utf-8"))

    def flush(self):
        self.text.flush()


def cmd_compare(args) -> int:
    from .analysis.compare import compare, compare_table
    scenario, err = _load(args)
    err = err or _unknown_era(args.era)
    if err:
        return _fail(err)
    runs = [(e, m, v) for e in args.era for m in (args.mode or [scenario.mode])
            for v in (args.vendor or [scenario.vendor])]
    if len(runs) * len(scenario.events) > MAX_EVENTS:
        return _fail(f"{args.scenario}: events: {len(scenario.events):,} events x {len(runs)} "
                     f"runs is {len(runs) * len(scenario.events):,} steps; compare runs at "
                     f"most {MAX_EVENTS:,}")
    try:
        doc = compare(scenario, runs)
    except ScenarioError as err:
        return _fail(f"{args.scenario}: {err}")
    print(json.dumps(doc, indent=2) if args.json else compare_table(doc))
    return 0


def _in_range(n, flag, most, why=""):
    if 1 <= n <= most:
        return None
    return f"{flag}: expected a number from 1 to {most:,}{why}, got {n}"


def _progress(label):
    """A progress line on a terminal's stderr (None when stderr is not one)."""
    if not sys.stderr.isatty():
        return None

    def show(done, total):
        print(f"\r{label}: {done}/{total}", end="", file=sys.stderr, flush=True)
    return show


def _progress_done():
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)


def cmd_check(args) -> int:
    from .analysis.search import MAX_EXAMPLES, find_violation, reproduction
    err = (_in_range(args.examples, "--examples", MAX_EXAMPLES) or load_variants(args.variants)
           or _in_range(args.jobs, "--jobs", 64)
           or _unknown_era([args.era]) or _unknown_era([args.baseline] if args.baseline else [],
                                                       "--baseline"))
    if err:
        return _fail(err)
    found, n = find_violation(args.era, args.mode, args.vendor, examples=args.examples,
                              seed=args.seed, flush_on_reuse=args.flush_on_reuse,
                              baseline=args.baseline, jobs=args.jobs,
                              progress=_progress("programs"))
    _progress_done()
    if found is None:
        print(f"no violation in {n} programs ({args.era}, {args.mode}, {args.vendor})")
        print("a random search that finds nothing is not a proof: more --examples or "
              "another --seed may find one")
        return 0
    print(json.dumps(reproduction(args.era, args.mode, args.vendor, found), indent=2))
    print(f"violation found after {n} programs ({args.era}, {args.mode}, {args.vendor}); "
          "the shortest reproduction is on stdout", file=sys.stderr)
    return 1


def cmd_ablate(args) -> int:
    from .analysis.ablate import ABLATION_MODES, DECISIONS, MAX_EXAMPLES, ablation_table, ablation_text
    err = (load_variants(args.variants) or _in_range(args.examples, "--examples", MAX_EXAMPLES)
           or _in_range(args.jobs, "--jobs", 64)
           or _unknown_era([args.era]))
    if err:
        return _fail(err)
    listed = args.era if args.era in DECISIONS else get_era(args.era).parent
    if listed not in DECISIONS:
        return _fail(f"--era: no decision list for {args.era!r} (have: {', '.join(DECISIONS)}, "
                     "or a variant of one)")
    rows = ablation_table(args.era, tuple(args.mode or ABLATION_MODES),
                          args.vendor, args.examples, decisions=DECISIONS[listed], jobs=args.jobs,
                          progress=_progress("rows"))
    _progress_done()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(ablation_text(args.era, rows))
    print(f"\nsearched up to {args.examples} random programs per row: a row without a "
          "violation is not a proof that the action is unneeded; more --examples may find one")
    return 0


def cmd_review(args) -> int:
    from .analysis.patch import MODES as REVIEW_MODES
    from .analysis.patch import review, review_text
    from .analysis.search import MAX_EXAMPLES
    searches = 2 * len(args.mode or REVIEW_MODES)   # each mode, for the variant and its base
    err = (_in_range(args.examples, "--examples", MAX_EXAMPLES // searches,
                     f" ({searches} searches of at most {MAX_EXAMPLES:,} programs in all)")
           or load_variants(args.variants)
           or _unknown_era([args.era]) or _unknown_era([args.baseline] if args.baseline else [],
                                                       "--baseline"))
    if err:
        return _fail(err)
    if not args.baseline and get_era(args.era).parent is None:
        return _fail(f"--era: {args.era} is not a variant; name the era to compare it with "
                     "(--baseline ERA)")
    doc = review(args.era, args.baseline, tuple(args.mode or REVIEW_MODES), args.vendor,
                 args.examples, args.seed)
    print(json.dumps(doc, indent=2) if args.json else review_text(doc))
    return 0


def cmd_eras(args) -> int:
    print(eras_table(all_eras(), args.verbose))
    return 0


def cmd_probe(args) -> int:
    from .probe.cli import main as probe_main
    return probe_main(args)


def _main(argv) -> int:
    if argv[:1] == ["quiz"]:                 # the quiz has its own OSTEP-style flags
        from .classroom.quiz import main as quiz_main
        return quiz_main(argv[1:])
    args = _parser().parse_args(argv)
    return {"run": cmd_run, "compare": cmd_compare, "check": cmd_check, "ablate": cmd_ablate,
            "review": cmd_review, "eras": cmd_eras, "probe": cmd_probe}[args.command](args)


def main(argv=None) -> int:
    """``python -m mmu_model ...``; the exit status.  Bad input is one line on
    stderr and 2, whatever raised it; a reader that goes away (``| head``)
    ends the command quietly with 141, as SIGPIPE ends a Unix filter."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    except ScenarioError as err:            # argument errors (the parser's) and the API's
        return _fail(str(err))
    except BrokenPipeError:
        try:                                # the interpreter's last flush must not fail too
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BaseException as err:            # only a --variants file's is ours: others re-raise
        line = _from_variant(err, argv[0] if argv else "")
        if line is None:
            raise
        return _fail(line)
