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


def _event(rng: random.Random, regs: dict) -> dict:
    ev = rng.choice(MAKERS)(regs)
    if ev["op"] == "mov_cr3":
        ev["value"] = rng.choice(CR3S) | (NOFLUSH if rng.random() < 0.3 else 0)
    return ev


def _ids(step_or_slots) -> list:
    return [r["id"] if r else None for r in step_or_slots]


def generate(seed: int, n: int = 3) -> list[dict]:
    """``n`` questions from ``random.Random(seed)``, each with its answer."""
    rng = random.Random(seed)
    eras = list(ERAS)
    out = []
    for number in range(1, n + 1):
        out.append(_question(rng, number, eras))
    return out


def _question(rng, number, eras) -> dict:
    era, mode = rng.choice(eras), rng.choice(MODES)
    vendor, start = rng.choice(VENDORS), rng.choice(STARTS)
    prefix = []
    sim = Simulation(era, mode, vendor, 1, start)
    for _ in range(rng.randint(0, PREFIX_MAX)):
        ev = _event(rng, sim.kvm.vcpus[0].regs())
        if sim.apply(ev)["fault"] is None:      # a faulting step changes nothing
            prefix.append(ev)
    mmu = sim.kvm.vcpus[0].mmu
    before = {"current": _id(mmu.root), "prev": [_id(r) for r in mmu.prev_roots]}
    regs = sim.kvm.vcpus[0].regs()
    for _ in range(20):           # prefer a write the guest is allowed to make
        ev = _event(rng, regs)
        step = _replay(era, mode, vendor, start, prefix + [ev])[-1]
        if step["fault"] is None and step["intercepted"]:
            break
    before_ids = [i for i in [before["current"]] + before["prev"] if i is not None]
    freed = {f["id"] for f in step["freed"]}
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
        },
        "trace": step_graph(step),
    }


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
    return "\n".join(lines)


def render(questions: list[dict], answers: bool = False, seed=None) -> str:
    """The quiz as text: parameters, then each question (and its answer)."""
    head = [f"ARG seed {seed}" if seed is not None else None,
            f"ARG questions {len(questions)}", f"ARG compute {answers}", ""]
    parts = ["\n".join(x for x in head if x is not None)]
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
                     f" | flushes {' '.join(a['tlb_flushes']) or '-'}")
    return "\n".join(lines)


def main(argv=None, out=None) -> int:
    """``python -m mmu_model quiz -s SEED [-n N] [-c] [--key]``; a bad argument
    is ScenarioError (the command line prints it as one line, exit 2)."""
    ap = OneLineParser(prog="python -m mmu_model quiz",
                       description="Seeded questions about KVM's MMU roots.")
    ap.add_argument("-s", "--seed", type=int, default=0, help="the random seed")
    ap.add_argument("-n", "--questions", type=int, default=3,
                    help=f"how many questions (1 to {MAX_QUESTIONS:,})")
    ap.add_argument("-c", "--compute", action="store_true", help="show the answers")
    ap.add_argument("--key", action="store_true", help="a one-line-per-question answer key")
    args = ap.parse_args(argv)
    if not 1 <= args.questions <= MAX_QUESTIONS:      # before any question is built
        raise ScenarioError("-n", f"expected a number of questions from 1 to {MAX_QUESTIONS:,}, "
                                  f"got {args.questions}")
    qs = generate(args.seed, args.questions)
    text = answer_key(qs) if args.key else render(qs, args.compute, seed=args.seed)
    (out or sys.stdout).write(text + "\n")
    return 0
