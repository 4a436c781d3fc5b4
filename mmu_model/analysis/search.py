"""Searching for violations: seeded random guest programs, shrunk to the shortest.

A violation needs an ordered motif (cache a translation, switch away, rewrite
the entry, change mode, switch back without a flush...), which uniformly drawn
event lists almost never contain.  So the search runs random *guest programs*
that pick their next action from weighted intentions and adapt it to the
vCPU's state (no MOV CR3 with PCID bits while PCIDs are off, RSM only in
SMM), and records the concrete events.  Each program draws only from a random
subset of the kinds of action (swarm testing), which makes short motifs much
more likely.  The first program that trips the
checker is shrunk by delta debugging: drop chunks, then single events, while
the violation persists.  Same arguments, same answer.
"""
from __future__ import annotations

import random

from ..arch.guest import DEFAULT_ADDRS, KERNEL_A, PTE_P, pte
from ..eras import with_flush_on_reuse
from ..harness.scenario import MODES, VENDORS, ScenarioError, check_choice, parse_event, show
from ..harness.sim import Simulation, era_argument
from ..kernel.registers import PRESETS, X86_CR4_PCIDE

SPACES = (0x1000, 0x2000, 0x3000)
STARTS = ("long-mode", "long-mode-pcid")
FRAMES = (0x7000, 0x7001)
WEIGHTS = (("access", 4), ("mov_cr3", 4), ("write_pte", 3), ("invlpg", 1), ("cr4", 2),
           ("cr0", 1), ("invpcid", 1), ("smm", 1), ("init", 0.3))
# nested-tdp adds L1's side: leave or re-enter L2, rewrite an EPT entry, INVEPT, INVVPID.
NESTED_WEIGHTS = (("switch", 2), ("write_ept", 3), ("invept", 1), ("invvpid", 1))
EPTPS = (0x5005E, 0x6005E)          # VMX: WB, 4-level, A/D on; two tables
NCR3S = (0x50000, 0x60000)          # SVM: the same two tables as plain nCR3s
EPT_FRAMES = (0x200000, 0x200001)
# The most programs one search runs (`check --examples`): under nested-tdp, the
# slowest mode, 10,000 took 21 s on an idle machine here and 100,000 took 9.4
# minutes on a busy one (README, "The command line").
MAX_EXAMPLES = 100_000


def _choose(rng, sim, kinds=WEIGHTS, cr4_bits=("PCIDE", "PGE", "PAE", "SMEP")) -> dict:
    """One concrete event for the vCPU's current state, of one of ``kinds``."""
    vcpu = sim.kvm.vcpus[0]
    kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
    addr = rng.choice(DEFAULT_ADDRS)
    if kind == "access":
        return {"op": "access", "addr": hex(addr)}
    if kind == "mov_cr3":
        space = rng.choice(SPACES)
        if not vcpu.cr4 & X86_CR4_PCIDE:
            return {"op": "mov_cr3", "value": hex(space)}
        # Like an OS, mostly one PCID per address space; sometimes any.
        pcid = SPACES.index(space) if rng.random() < 0.75 else rng.randrange(3)
        return {"op": "mov_cr3", "value": hex(space | pcid | (rng.random() < 0.5) << 63)}
    if kind == "write_pte":
        space = rng.choice(SPACES)
        old = sim.kvm.guest.read(space >> 12, addr)
        frame = FRAMES[0] if old is None or (old >> 12) & 0xFFFFFFFFFF != FRAMES[0] else FRAMES[1]
        value = pte(frame, user=addr != KERNEL_A, glob=addr == KERNEL_A)
        if rng.random() < 0.15:
            value &= ~PTE_P
        return {"op": "write_pte", "cr3": hex(space), "addr": hex(addr), "value": hex(value)}
    if kind == "invlpg":
        return {"op": "invlpg", "addr": hex(addr)}
    if kind == "cr4":
        bit = rng.choice(cr4_bits)
        return {"op": "mov_cr4", "clear" if vcpu.cr4 & _bit("cr4", bit) else "set": [bit]}
    if kind == "cr0":
        bit = rng.choice(("WP", "PG"))
        return {"op": "mov_cr0", "clear" if vcpu.cr0 & _bit("cr0", bit) else "set": [bit]}
    if kind == "invpcid":
        return {"op": "invpcid", "type": rng.randrange(4), "pcid": rng.randrange(3),
                "addr": hex(addr)}
    if kind == "smm":
        return {"op": "rsm" if vcpu.smm else "smi"}
    if kind == "init":
        return {"op": "init"}
    # nested-tdp: L1's actions (an L2 that is running exits first)
    if vcpu.guest_mode and kind != "switch":
        return {"op": "vmexit"}
    pointers = EPTPS if sim.vendor == "vmx" else NCR3S
    if kind == "switch":
        if vcpu.guest_mode:
            return {"op": "vmexit"}
        # Like a hypervisor, mostly the same L2 (VPID and EPTP) as last time;
        # otherwise another L2 - a VPID other than the last (0: VPID off).
        v = vcpu.vmcs12
        same = rng.random() < 0.6
        other = [x for x in range(8) if x != v.virtual_processor_id]
        return {"op": "vmentry", "eptp": hex(v.ept_pointer if same else rng.choice(pointers)),
                "vpid": v.virtual_processor_id if same else rng.choice(other)}
    if kind == "write_ept":
        entry = sim.kvm.guest.read(rng.choice(SPACES) >> 12, addr)
        gpa = (entry or 0) & ~0xFFF & ((1 << 52) - 1)
        value = rng.choice(EPT_FRAMES) << 12 | (0 if rng.random() < 0.15 else 7)
        return {"op": "write_ept", "eptp": hex(rng.choice(pointers)), "gpa": hex(gpa),
                "value": hex(value)}
    if kind == "invept":
        return {"op": "invept", "type": rng.choice((1, 2)), "eptp": hex(rng.choice(EPTPS))}
    last = vcpu.vmcs12.virtual_processor_id
    vpid = last if last and rng.random() < 0.75 else rng.randrange(1, 3)
    return {"op": "invvpid", "type": rng.randrange(4), "vpid": vpid, "addr": hex(addr)}


def _after(raw, start) -> list:
    """Events a program adds after one it chose: after an INIT, userspace puts
    the vCPU back in its start state (KVM_SET_SREGS) so the program goes on."""
    if raw["op"] == "init":
        return [{"op": "set_sregs", **{k: hex(v) for k, v in PRESETS[start].registers().items()}}]
    return []


def _bit(reg, name):
    from ..kernel.registers import bit_by_name
    return bit_by_name(reg, name)


def run_program(era, mode, vendor, start, events):
    """Replay concrete events; (step index, violations) of the first violation."""
    sim = Simulation(era, mode, vendor, 1, PRESETS[start].registers(), trace=False, record=False)
    for i, raw in enumerate(events):
        out = sim.step(parse_event(raw, f"events[{i}]", 1))
        if out["violations"]:
            return i, out["violations"]
    return None


def _swarm(rng, mode="shadow", vendor="vmx"):
    """Swarm testing: each program uses a random subset of the kinds of action
    (and of the CR4 bits), so short motifs made of a few kinds come up far more
    often than in programs that mix everything.  SVM's L1 has no INVEPT or
    INVVPID: it relies on VMRUN, which KVM makes sync and flush."""
    nested_kinds = NESTED_WEIGHTS if vendor == "vmx" else tuple(
        kw for kw in NESTED_WEIGHTS if kw[0] not in ("invept", "invvpid"))
    weights = WEIGHTS + (nested_kinds if mode == "nested-tdp" else ())
    kinds = [kw for kw in weights if rng.random() < 0.75] or list(weights)
    bits = [b for b in ("PCIDE", "PGE", "PAE", "SMEP") if rng.random() < 0.75] or ["PCIDE"]
    return kinds, tuple(bits)


def random_program(era, mode, vendor, rng, length, judge=True):
    """Generate and run one program; (start, events, first violation or None).
    With ``judge`` false nothing looks for violations: the same events come
    out (and the same draws from ``rng``) as long as there is none."""
    start = rng.choice(STARTS)
    kinds, bits = _swarm(rng, mode, vendor)
    sim = Simulation(era, mode, vendor, 1, PRESETS[start].registers(), trace=False, record=False)
    sim.judge = judge
    events = []
    while len(events) < length:
        chosen = _choose(rng, sim, kinds, bits)
        for raw in [chosen] + _after(chosen, start):
            events.append(raw)
            out = sim.step(parse_event(raw, f"events[{len(events) - 1}]", 1))
            if out["violations"]:
                return start, events, (len(events) - 1, out["violations"])
    return start, events, None


def shrink(era, mode, vendor, start, events, baseline=None):
    """Delta debugging: the shortest sublist that still shows a violation (one
    that ``baseline``, if given, does not show)."""
    def bad(evs):
        return (run_program(era, mode, vendor, start, evs) is not None
                and (baseline is None or run_program(baseline, mode, vendor, start, evs) is None))
    events = list(events)
    chunk = max(1, len(events) // 2)
    while chunk >= 1:
        i, changed = 0, False
        while i < len(events):
            candidate = events[:i] + events[i + chunk:]
            if candidate and bad(candidate):
                events, changed = candidate, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return events


def find_violation(era, mode, vendor="vmx", examples=1000, length=30, seed=0,
                   flush_on_reuse=False, baseline=None, jobs=1, progress=None):
    """Run up to ``examples`` random programs; the shrunk first violation as
    (start, events, (step, violations)), or None - paired with the number of
    programs run.  ``flush_on_reuse`` runs the era with kvm.ko's
    force_flush_and_sync_on_reuse=1 (see docs/findings.md).  With
    ``baseline`` (an era), only violations that the baseline does not show on
    the same program count.  ``jobs`` > 1 shares the programs among that many
    processes, with the same answer as one (see _parallel_search);
    ``progress(done, examples)`` is called as programs finish."""
    era_obj = era_argument(era)
    check_search(mode, vendor, examples, MAX_EXAMPLES)
    if flush_on_reuse:
        era_obj = with_flush_on_reuse(era_obj)
    base = era_argument(baseline, "baseline") if baseline is not None else None
    rng = random.Random(f"{era_obj.name}/{mode}/{vendor}/{seed}")
    if jobs > 1 and examples > 1:
        hit = _parallel_search(era_obj, mode, vendor, base, rng, examples, length, jobs, progress)
    else:
        hit = None
        for n in range(1, examples + 1):
            start, events, found = random_program(era_obj, mode, vendor, rng, length)
            if progress is not None and n % 10 == 0:
                progress(n, examples)
            if found is None:
                continue
            events = events[:found[0] + 1]
            if base is not None and run_program(base, mode, vendor, start, events) is not None:
                continue
            hit = n, start, events
            break
    if hit is None:
        return None, examples
    n, start, events = hit
    small = shrink(era_obj, mode, vendor, start, events, base)
    return (start, small, run_program(era_obj, mode, vendor, start, small)), n


# The parallel search.  Program n starts from the random generator's state at
# the end of program n - 1, and a program ends early at its first violation,
# so the programs cannot simply be dealt out.  Instead every worker replays
# every program of a block, but only looks for violations in its own share
# (every jobs-th program): without a violation a replay draws exactly what
# the judged run draws, so all workers agree on each program and on the state
# at the end of the block.  The earliest program with a violation in any share
# decides: if it counts, it is the answer (programs after it do not matter);
# if the baseline shows it too, the next block starts right after it, from
# the state its owner saw there.  Same programs, same order, same answer.
_BLOCK = 48
_JOB = None                     # (era, mode, vendor, baseline, length): set before the fork


def _share(task):
    """One worker's part of a block: (hit or None, state at the end).  A hit is
    (n, "found", (start, events)) or (n, "excused", state after program n)."""
    state, first, count, mine, jobs = task
    era, mode, vendor, base, length = _JOB
    rng = random.Random()
    rng.setstate(state)
    for n in range(first, first + count):
        judge = (n - first) % jobs == mine
        start, events, found = random_program(era, mode, vendor, rng, length, judge)
        if found is None:
            continue
        events = events[:found[0] + 1]
        if base is not None and run_program(base, mode, vendor, start, events) is not None:
            return (n, "excused", rng.getstate()), None
        return (n, "found", (start, events)), None
    return None, rng.getstate()


def ordered_map(fn, items, jobs=1, progress=None) -> list:
    """``[fn(x) for x in items]``, with ``jobs`` processes when jobs > 1 (forked,
    so they see what this process has: registered variants, module globals).
    ``progress(done, total)`` is called as results come in."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        out = []
        for x in items:
            out.append(fn(x))
            if progress is not None:
                progress(len(out), len(items))
        return out
    import multiprocessing
    out = []
    with multiprocessing.get_context("fork").Pool(min(jobs, len(items))) as pool:
        for r in pool.imap(fn, items):
            out.append(r)
            if progress is not None:
                progress(len(out), len(items))
    return out


def _parallel_search(era, mode, vendor, base, rng, examples, length, jobs, progress):
    """(n, start, events) of the first program with a violation that counts, or None."""
    import multiprocessing
    global _JOB
    _JOB = (era, mode, vendor, base, length)
    state, first = rng.getstate(), 1
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        while first <= examples:
            count = min(_BLOCK, examples - first + 1)
            results = pool.map(_share, [(state, first, count, j, jobs) for j in range(jobs)])
            hits = sorted((h for h, _end in results if h is not None), key=lambda h: h[0])
            if hits:
                n, kind, what = hits[0]
                if kind == "found":
                    return n, what[0], what[1]
                state, first = what, n + 1
            else:
                state, first = results[0][1], first + count
            if progress is not None:
                progress(first - 1, examples)
    return None


def check_search(mode, vendor, examples, most):
    """ScenarioError unless a search's arguments are ones it can run."""
    check_choice(mode, MODES, "mode", python=True)
    check_choice(vendor, VENDORS, "vendor", python=True)
    if isinstance(examples, bool) or not isinstance(examples, int) or not 1 <= examples <= most:
        raise ScenarioError("examples", f"expected a number of programs from 1 to {most:,}, "
                                        f"got {show(examples, True)}")


def reproduction(era, mode, vendor, found) -> dict:
    """The shrunk program as a scenario file that ``run`` replays."""
    start, events, (step, viol) = found
    v = viol[0]
    return {
        "name": f"check-{era}-{mode}",
        "description": (f"Shortest program found by 'check' under {era}/{mode}/{vendor}: after "
                        f"step {step} the guest can use {v['stale']} for {v['addr']} "
                        f"(PCID {v['pcid']}, from the {v['source']})"
                        + (f", which step {v['invalidated_by_step']} should have invalidated"
                           if v["invalidated_by_step"] is not None else "")
                        + f"; its tables say {v['expected']}."),
        "era": era, "mode": mode, "vendor": vendor, "vcpus": 1, "start": start,
        "events": events,
    }
