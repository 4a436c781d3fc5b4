"""Seeded quizzes: "after this write, which roots are freed, kept, flushed?"

Like the OSTEP homework simulators: ``-s SEED`` makes the problems, ``-c``
shows the answers, and the output starts by echoing every parameter.  Each
question is a random era, mode, vendor and start state, a short random
prefix of events, and one more event to predict; the answer is what the
model does, with the kernel calls that explain it.  Same seed, same bytes.

Pure: no UI library, no print (``main`` writes to the stream it is given).
"""
from __future__ import annotations

import random
import sys

from ..harness.render import event_label, step_graph
from ..harness.scenario import MODES, VENDORS, OneLineParser, ScenarioError, parse_event
from ..harness.sim import Simulation
from ..kernel.registers import PRESETS

# The built-in eras, fixed here so that a variant registered elsewhere in the
# process (an ablation, a reviewer's file) cannot change what a seed produces.
ERAS = ("v5.15", "v5.17", "seed-v1", "v5.18", "v5.19", "v6.4", "v6.18", "seed-v2",
        "review-sketch")
STARTS = ("long-mode", "long-mode-pcid", "linux", "pae", "32bit")
SOURCES = ("same", "cache", "hash", "shared", "preserved", "new", "special")
CR3S = (0x1000, 0x2001, 0x3002, 0x4003)
NOFLUSH = 1 << 63
PREFIX_MAX = 3
# The most questions one quiz prints (`-n`): they are all built before the first
# is printed, and 1,000 take about 3 s on the project's machines.
MAX_QUESTIONS = 1_000


def _toggle(reg_op, reg, name):
    def make(regs):
        from ..kernel.registers import REGISTER_FLAGS
        on = regs[reg] & REGISTER_FLAGS[reg][name]
        return {"op": reg_op, ("clear" if on else "set"): [name]}
    return make


# Event makers: each takes the acting vCPU's registers and returns an event.
MAKERS = (
    _toggle("mov_cr0", "cr0", "WP"), _toggle("mov_cr0", "cr0", "WP"),
    _toggle("mov_cr4", "cr4", "PGE"), _toggle("mov_cr4", "cr4", "SMEP"),
    _toggle("mov_cr4", "cr4", "PCIDE"), _toggle("wrmsr_efer", "efer", "NX"),
    lambda regs: {"op": "mov_cr3", "value": 0},            # a CR3 pick, replaced below
    lambda regs: {"op": "mov_cr3", "value": 0},
    lambda regs: {"op": "mov_cr3", "value": 0},
    lambda regs: {"op": "invpcid", "type": 1, "pcid": regs["cr3"] & 0xFFF},
    lambda regs: {"op": "smi"} if not regs["smm"] else {"op": "rsm"},
    lambda regs: {"op": "init"},
    lambda regs: {"op": "set_sregs", "cr0": PRESETS["long-mode"].cr0},
)


# The levels a teacher scopes a quiz to (--level); no level is level 3.
# Each: the event makers, the start states, how many events come first, and
# the chance that a MOV CR3 sets the no-flush bit.
LEVELS_HELP = {1: "one write from the start state",
               2: "a few writes first: the root cache",
               3: "everything: SMM, INIT, KVM_SET_SREGS, INVPCID, PAE and 32-bit"}
LEVELS = {
    1: (MAKERS[:9], ("long-mode", "long-mode-pcid"), (0, 0), 0.0),
    2: (MAKERS[:9], ("long-mode", "long-mode-pcid", "linux"), (1, PREFIX_MAX), 0.3),
    3: (MAKERS, STARTS, (0, PREFIX_MAX), 0.3),
}


def _event(rng: random.Random, regs: dict, makers=MAKERS, noflush=0.3) -> dict:
    ev = rng.choice(makers)(regs)
    if ev["op"] == "mov_cr3":
        ev["value"] = rng.choice(CR3S) | (NOFLUSH if rng.random() < noflush else 0)
    return ev


def _ids(step_or_slots) -> list:
    return [r["id"] if r else None for r in step_or_slots]


def scope(eras=None, modes=None, nested: bool = True, level=None) -> dict:
    """The questions' scope: {eras, modes, level} as lists, checked.  ``eras``
    and ``modes`` are a name, a comma-separated list or a list (None: all
    built-in eras, every mode); ``nested=False`` drops nested TDP; ``level``
    is 1, 2 or 3 (None: 3).  A ValueError names what is wrong."""
    def names(value, known, what):
        if value is None:
            return list(known)
        items = [value] if isinstance(value, str) else list(value)
        items = [x.strip() for item in items for x in str(item).split(",") if x.strip()]
        for x in items:
            if x not in known:
                raise ValueError(f"--{what}: unknown {what} {x!r} (expected one of: "
                                 f"{', '.join(known)})")
        if not items:
            raise ValueError(f"--{what}: empty")
        return list(dict.fromkeys(items))
    era_list = names(eras, ERAS, "era")
    mode_list = names(modes, MODES, "mode")
    if not nested:
        mode_list = [m for m in mode_list if m != "nested-tdp"]
        if not mode_list:
            raise ValueError("--no-nested: no mode is left (--mode names only nested-tdp)")
    if level not in (None, 1, 2, 3):
        raise ValueError(f"--level: {level!r} is not 1, 2 or 3")
    return {"eras": era_list, "modes": mode_list, "level": level}


def generate(seed: int, n: int = 3, *, eras=None, modes=None, nested: bool = True,
             level=None) -> list[dict]:
    """``n`` questions from ``random.Random(seed)``, each with its answer,
    scoped by :func:`scope`'s arguments.  Unscoped, the questions are the
    ones this function has always made for a seed."""
    sc = scope(eras, modes, nested, level)
    rng = random.Random(seed)
    out = []
    for number in range(1, n + 1):
        out.append(_question(rng, number, sc["eras"], sc["modes"], sc["level"] or 3))
    return out


def _question(rng, number, eras, modes=MODES, level=3) -> dict:
    makers, starts, (lo, hi), noflush = LEVELS[level]
    era, mode = rng.choice(eras), rng.choice(modes)
    vendor, start = rng.choice(VENDORS), rng.choice(starts)
    prefix = []
    sim = Simulation(era, mode, vendor, 1, start)
    want = rng.randint(lo, hi)
    # Level 3 (as ever): a faulting event is dropped from the prefix.  Levels
    # 1 and 2 draw until the prefix has as many events as drawn (20 tries).
    tries = want if level == 3 else 20
    for _ in range(tries):
        if len(prefix) == want:
            break
        ev = _event(rng, sim.kvm.vcpus[0].regs(), makers, noflush)
        if sim.apply(ev)["fault"] is None:      # a faulting step changes nothing
            prefix.append(ev)
    mmu = sim.kvm.vcpus[0].mmu
    before = {"current": _id(mmu.root), "prev": [_id(r) for r in mmu.prev_roots]}
    regs = sim.kvm.vcpus[0].regs()
    for _ in range(20):           # prefer a write the guest is allowed to make
        ev = _event(rng, regs, makers, noflush)
        step = _replay(era, mode, vendor, start, prefix + [ev])[-1]
        if step["fault"] is None and step["intercepted"]:
            break
    before_ids = [i for i in [before["current"]] + before["prev"] if i is not None]
    freed = {f["id"] for f in step["freed"]}
    decider, reason = why(step, era, vendor)
    return {
        "number": number, "era": era, "mode": mode, "vendor": vendor, "start": start,
        "prefix": prefix, "event": ev, "before": before, "before_ids": before_ids,
        "registers": {k: v for k, v in regs.items()},
        "answer": {
            "intercepted": step["intercepted"], "fault": step["fault"], "reason": step["reason"],
            "roots": {rid: "freed" if rid in freed else "kept" for rid in before_ids},
            "freed": [(f["id"], f["slot"]) for f in step["freed"]],
            "destroyed": list(step["destroyed"]),
            "root": step["root"]["id"] if step["root"] else None,
            "prev_roots": _ids(step["prev_roots"]),
            "root_source": step["root_source"],
            "requests": list(step["requests"]),
            "tlb_flushes": list(step["tlb_flushes"]),
            "why": reason, "decided_by": decider,
        },
        "trace": step_graph(step),
    }


# ---------------------------------------------------------------------------
# The one-line why: which kernel function decided the answer

# No VM exit: where the kernel leaves the instruction to the guest.
NO_EXIT_BY = {
    ("vmx", "mov_cr0"): ("vmx_l1_guest_owned_cr0_bits", "arch/x86/kvm/vmx/vmx.h"),
    ("vmx", "mov_cr4"): ("set_cr4_guest_host_mask", "arch/x86/kvm/vmx/vmx.c"),
    ("vmx", "mov_cr3"): ("vmx_exec_control", "arch/x86/kvm/vmx/vmx.c"),
    ("vmx", "invlpg"): ("vmx_exec_control", "arch/x86/kvm/vmx/vmx.c"),
    ("vmx", "invpcid"): ("vmx_exec_control", "arch/x86/kvm/vmx/vmx.c"),
    ("svm", "mov_cr0"): ("svm_set_cr0", "arch/x86/kvm/svm/svm.c"),
    ("svm", "mov_cr3"): ("init_vmcb", "arch/x86/kvm/svm/svm.c"),
    ("svm", "invlpg"): ("init_vmcb", "arch/x86/kvm/svm/svm.c"),
    ("svm", "invpcid"): ("svm_recalc_instruction_intercepts", "arch/x86/kvm/svm/svm.c"),
}
# Functions inside the MMU: the decider is the caller that reached them.
MMU_PREFIXES = ("kvm_mmu_", "__kvm_mmu_", "mmu_", "fast_pgd_switch", "cached_root_",
                "kvm_tdp_mmu_", "tdp_mmu_", "kvm_init_mmu", "init_kvm_", "kvm_mmu")
SHORT_FILES = {"vmx.c": "arch/x86/kvm/vmx/vmx.c", "vmx.h": "arch/x86/kvm/vmx/vmx.h",
               "svm.c": "arch/x86/kvm/svm/svm.c", "nested.c": "arch/x86/kvm/vmx/nested.c"}


def _mmu(name: str) -> bool:
    return name.startswith(MMU_PREFIXES)


def kernel_file(era_name: str, vendor: str, name: str) -> str | None:
    """The kernel file the model's mirror of ``name`` cites (its Mirrors: line)."""
    from ..eras import all_eras, get_era
    first = get_era(era_name)
    # The era's own mirror first, then the eras it derives from, then any era
    # (an unmerged era's own functions cite the posting, not a file).
    chain, era = [], first
    while era is not None and era not in chain:
        chain.append(era)
        era = get_era(era.parent) if getattr(era, "parent", None) else None
    for era in chain + [e for e in all_eras() if e not in chain]:
        found = _cited_file(era, vendor, name)
        if found:
            return found
    return None


def _cited_file(era, vendor: str, name: str) -> str | None:
    import inspect
    import re
    for core, fn in vars(era.build_ops(None, vendor)).items():
        if era.kernel_name(core, vendor) != name:
            continue
        doc = inspect.getdoc(fn) or ""
        cited = doc[doc.find("Mirrors:"):] if "Mirrors:" in doc else ""
        files = [(m.start(), m.group(1)) for m in
                 re.finditer(r"([\w./]+\.[ch])\b", cited)]
        if not files:
            return None
        at = cited.find(f"{name}(")
        before = [f for pos, f in files if at < 0 or pos < at] or [files[0][1]]
        path = before[-1].split("/")[-1] if before[-1].count("/") == 0 else before[-1]
        return SHORT_FILES.get(path, path)
    return None


def _path(calls, i) -> list[str]:
    """The names from the outermost call down to calls[i]."""
    depth, name = calls[i]
    path = [name]
    for d, n in reversed(calls[:i]):
        if d < depth:
            path.append(n)
            depth = d
    return path[::-1]


def _first(calls, test) -> int | None:
    return next((i for i, (_d, n) in enumerate(calls) if test(n)), None)


SOURCE_FINDERS = {
    "cache": lambda n: n.startswith("cached_root_find") or n == "fast_pgd_switch",
    "same": lambda n: n.startswith("cached_root_find") or n == "fast_pgd_switch",
    "hash": lambda n: n in ("kvm_mmu_get_page", "kvm_mmu_get_shadow_page",
                            "kvm_mmu_find_shadow_page"),
    "shared": lambda n: n in ("kvm_tdp_mmu_get_vcpu_root_hpa", "mmu_alloc_direct_roots"),
    "preserved": lambda n: n in ("kvm_tdp_mmu_get_vcpu_root_hpa", "mmu_alloc_direct_roots"),
    "new": lambda n: n.startswith("mmu_alloc_") or n == "kvm_tdp_mmu_get_vcpu_root_hpa",
    "special": lambda n: n.startswith("mmu_alloc_"),
}
FREEING = ("mmu_free_root_page", "kvm_tdp_mmu_put_root")
FROM = {"cache": "from the prev_roots cache", "hash": "from the shadow-page hash",
        "shared": "shared with another vCPU", "preserved": "kept alive by the TDP MMU"}


def _cite(era: str, vendor: str, name: str) -> str:
    f = kernel_file(era, vendor, name)
    return f if f else f"{era}'s own function, in no kernel tree"


def why(step, era: str, vendor: str) -> tuple[str, str]:
    """(decider, one line): what decided this step's answer, naming the
    kernel function (and its file) that chose it and the call path from it to
    the effect, all read from the step's own trace."""
    calls = list(zip(step["call_depth"], step["calls"]))
    op = step["op"]
    top = calls[0][1] if calls else op
    if step["fault"]:
        return top, (f"{top}() ({_cite(era, vendor, top)}) refused the value: "
                     f"#{step['fault']}, {step['reason']}")
    if not step["intercepted"]:
        fn, f = NO_EXIT_BY.get((vendor, op), (None, None))
        if fn is None:
            return "-", f"no VM exit: {step['reason']}"
        return fn, f"no VM exit: {fn}() ({f}) leaves it to the guest, so no KVM function runs"
    freed = list(dict.fromkeys(f["id"] for f in step["freed"]))
    i, what = None, None
    if freed:
        i = _first(calls, lambda n: n in FREEING)
        i = _first(calls, lambda n: n == "kvm_mmu_free_roots") if i is None else i
        what = (f"root{'s' if len(freed) > 1 else ''} "
                f"{', '.join(f'#{r}' for r in freed)} freed")
    if i is None:
        src = step["root_source"]
        i = _first(calls, SOURCE_FINDERS.get(src, lambda n: False))
        cur = f"#{step['root']['id']}" if step["root"] else "none"
        what = {"same": f"root {cur} stays current",
                "new": f"the current root {cur} is new",
                "special": f"the current root {cur} (the PAE root) is rebuilt"}.get(
                    src, f"the current root {cur} comes back {FROM.get(src, 'from ' + src)}")
    if i is None:
        return top, (f"{what}: nothing that {top}() ({_cite(era, vendor, top)}) ran "
                     "touched the roots")
    path = _path(calls, i)
    j = max((k for k, n in enumerate(path) if not _mmu(n)), default=0)
    decider = path[j]
    via = " → ".join(f"{n}()" for n in path[j:])
    line = f"{what}, decided in {decider}() ({_cite(era, vendor, decider)}): {via}"
    if decider == "vcpu_enter_guest" and step["requests"]:
        line += f", at the next entry, for {', '.join(step['requests'])} from {top}()"
    return decider, line


def _id(info):
    return info.hpa.id if info.hpa is not None else None


def _replay(era, mode, vendor, start, events) -> list[dict]:
    sim = Simulation(era, mode, vendor, 1, start)
    return sim.run([parse_event(e, "event", 1) for e in events])


def _label(ev: dict) -> str:
    return event_label(parse_event(ev, "event", 1))


def _slots(current, prev) -> str:
    def one(i):
        return f"#{i}" if i is not None else "-"
    return f"current {one(current)}   prev_roots [{', '.join(one(i) for i in prev)}]"


def question_text(q: dict) -> str:
    """One question, every parameter first."""
    regs = "  ".join(f"{k}={v:#x}" for k, v in q["registers"].items() if k != "smm")
    lines = [f"Question {q['number']}",
             f"  era {q['era']}   mode {q['mode']}   vendor {q['vendor']}   vcpus 1   "
             f"start {q['start']}"]
    if q["prefix"]:
        lines.append("  events so far:")
        lines += [f"    {i}. {_label(e)}" for i, e in enumerate(q["prefix"], 1)]
    else:
        lines.append("  events so far: none")
    lines.append(f"  registers now: {regs}" + ("  (in SMM)" if q["registers"]["smm"] else ""))
    lines.append(f"  roots now:     {_slots(q['before']['current'], q['before']['prev'])}")
    if q["mode"] == "nested-tdp":
        lines.append("  (nested TDP: the guest is L2 and the registers are its own; the roots are "
                     "guest_mmu's, L0's shadow of L1's EPT/NPT table; L1's own root is on root_mmu)")
    lines.append(f"  the guest does: {_label(q['event'])}")
    lines.append("  Which roots are freed and which kept? Where does the current root come "
                 "from? Which TLB flushes happen?")
    return "\n".join(lines)


def answer_text(q: dict) -> str:
    """The model's answer to one question, with its kernel calls."""
    a = q["answer"]
    lines = ["  Answer:"]
    if a["fault"]:
        lines.append(f"    #{a['fault']}: {a['reason']}; nothing changes")
    elif not a["intercepted"]:
        lines.append(f"    no VM exit: {a['reason']}")
    for rid, mark in a["roots"].items():
        lines.append(f"    root #{rid}: {mark}")
    if a["freed"]:
        lines.append("    freed:     " + ", ".join(f"#{i} (was {s})" for i, s in a["freed"]))
    if a["destroyed"]:
        lines.append("    destroyed: " + ", ".join(f"#{i}" for i in a["destroyed"]))
    lines.append(f"    roots after: {_slots(a['root'], a['prev_roots'])}")
    lines.append(f"    current root from: {a['root_source']}")
    lines.append(f"    requests: {', '.join(a['requests']) or 'none'}")
    lines.append(f"    TLB flushes: {', '.join(a['tlb_flushes']) or 'none'}")
    lines.append("    kernel calls:")
    lines += ["      " + t for t in (q["trace"] or "(none)").splitlines()]
    lines.append(f"    Why: {a['why']}")
    return "\n".join(lines)


def render(questions: list[dict], answers: bool = False, seed=None, scoped=None) -> str:
    """The quiz as text: parameters, then each question (and its answer).
    ``scoped`` is :func:`scope`'s result, echoed as ARG lines."""
    head = [f"ARG seed {seed}" if seed is not None else None,
            f"ARG questions {len(questions)}", f"ARG compute {answers}"]
    if scoped is not None:
        head += [f"ARG era {','.join(scoped['eras'])}", f"ARG mode {','.join(scoped['modes'])}",
                 f"ARG level {scoped['level'] or 3}"]
    parts = ["\n".join(x for x in head + [""] if x is not None)]
    for q in questions:
        parts.append(question_text(q))
        parts.append(answer_text(q) if answers else
                     "  Answer: predict it, then check with -c.")
        parts.append("")
    return "\n".join(parts)


def answer_key(questions: list[dict]) -> str:
    """For teachers: one line per question with the whole answer."""
    lines = []
    for q in questions:
        a = q["answer"]
        freed = " ".join(f"#{i}" for i, _s in a["freed"]) or "-"
        lines.append(f"{q['number']}: {q['era']}/{q['mode']}/{q['vendor']} {_label(q['event'])}"
                     f" | exit {'yes' if a['intercepted'] else 'no'}"
                     f" | freed {freed} | current #{a['root']} from {a['root_source']}"
                     f" | flushes {' '.join(a['tlb_flushes']) or '-'}"
                     f" | by {a['decided_by']}()")
    return "\n".join(lines)


def add_scope_flags(ap) -> None:
    """--era, --mode, --no-nested, --level: what a teacher scopes a quiz to."""
    ap.add_argument("--era", action="append", metavar="ERA[,ERA]",
                    help="only these eras (repeat or separate by commas; default: all built-in)")
    ap.add_argument("--mode", action="append", metavar="MODE[,MODE]",
                    help=f"only these modes (of: {', '.join(MODES)})")
    ap.add_argument("--no-nested", action="store_true", help="no nested TDP questions")
    ap.add_argument("--level", type=int, choices=(1, 2, 3),
                    help="; ".join(f"{k}: {v}" for k, v in LEVELS_HELP.items()) + " (default 3)")


def main(argv=None, out=None) -> int:
    """``python -m mmu_model quiz -s SEED [-n N] [-c] [--key] [--era E] [--mode M]
    [--no-nested] [--level 1|2|3]``; a bad argument is ScenarioError (the command
    line prints it as one line, exit 2)."""
    ap = OneLineParser(prog="python -m mmu_model quiz",
                       description="Seeded questions about KVM's MMU roots.")
    ap.add_argument("-s", "--seed", type=int, default=0, help="the random seed")
    ap.add_argument("-n", "--questions", type=int, default=3,
                    help=f"how many questions (1 to {MAX_QUESTIONS:,})")
    ap.add_argument("-c", "--compute", action="store_true", help="show the answers")
    ap.add_argument("--key", action="store_true", help="a one-line-per-question answer key")
    add_scope_flags(ap)
    args = ap.parse_args(argv)
    if not 1 <= args.questions <= MAX_QUESTIONS:      # before any question is built
        raise ScenarioError("-n", f"expected a number of questions from 1 to {MAX_QUESTIONS:,}, "
                                  f"got {args.questions}")
    try:
        scoped = scope(args.era, args.mode, not args.no_nested, args.level)
    except ValueError as err:
        where, _, what = str(err).partition(": ")
        raise ScenarioError(where, what) from None
    qs = generate(args.seed, args.questions, eras=scoped["eras"], modes=scoped["modes"],
                  level=scoped["level"])
    text = answer_key(qs) if args.key else render(qs, args.compute, seed=args.seed,
                                                  scoped=scoped)
    (out or sys.stdout).write(text + "\n")
    return 0
