"""Text renderings of outcomes: the step table, the function graph, the era list."""
from __future__ import annotations

from ..kernel.registers import bit_names
from ..kernel.trace import function_graph


def _bits(reg: str, mask: int) -> str:
    return ",".join(bit_names(reg, mask))


def event_label(ev: dict) -> str:
    """A short, readable form of a normalised event."""
    op = ev["op"]
    if op in ("mov_cr0", "mov_cr4", "wrmsr_efer"):
        reg = {"mov_cr0": "cr0", "mov_cr4": "cr4", "wrmsr_efer": "efer"}[op]
        parts = []
        if "value" in ev:
            parts.append(hex(ev["value"]))
        if ev.get("set"):
            parts.append("+" + _bits(reg, ev["set"]))
        if ev.get("clear"):
            parts.append("-" + _bits(reg, ev["clear"]))
        if ev.get("host"):
            parts.append("(host)")
        return f"{op} {' '.join(parts)}"
    if op == "mov_cr3":
        return f"mov_cr3 {ev['value']:#x}"
    if op == "invlpg":
        return f"invlpg {ev['addr']:#x}"
    if op == "invpcid":
        addr = f" addr={ev['addr']:#x}" if ev["type"] == 0 else ""
        return f"invpcid type={ev['type']} pcid={ev['pcid']}{addr}"
    if op == "access":
        return f"access {ev['addr']:#x}"
    if op == "write_pte":
        return f"write_pte {ev['cr3']:#x}:{ev['addr']:#x}={ev['value']:#x}"
    if op == "set_sregs":
        return "set_sregs " + " ".join(f"{k}={ev[k]:#x}" for k in ("cr0", "cr3", "cr4", "efer") if k in ev)
    if op == "vmentry":
        parts = [f"eptp={ev['eptp']:#x}"] if "eptp" in ev else []
        parts += [f"vpid={ev['vpid']}"] if "vpid" in ev else []
        return " ".join(["vmentry", *parts])
    if op == "invept":
        return f"invept type={ev['type']}" + (f" eptp={ev['eptp']:#x}" if ev["type"] == 1 else "")
    if op == "invvpid":
        addr = f" addr={ev['addr']:#x}" if ev["type"] == 0 else ""
        return f"invvpid type={ev['type']} vpid={ev['vpid']}{addr}"
    if op == "write_ept":
        return f"write_ept {ev['eptp']:#x}:{ev['gpa']:#x}={ev['value']:#x}"
    return op


def _root(r) -> str:
    if r is None:
        return "-"
    return f"#{r['id']}" + ("(pae)" if r.get("kind") == "special" else "")


def _short_req(name: str) -> str:
    return name.replace("KVM_REQ_", "")


def _exit(step: dict, ev: dict) -> str:
    """The exit column: a host ioctl (KVM_SET_SREGS, a host-initiated WRMSR)
    is no VM exit, so it reads "ioctl" rather than "yes"."""
    if ev["op"] == "set_sregs" or ev.get("host"):
        return "ioctl"
    return "yes" if step["intercepted"] else "no"


def step_table(doc: dict, events: list[dict]) -> str:
    """The outcome document as a table, one row per step, parameters echoed first."""
    head = [f"scenario: {doc['scenario']}   era: {doc['era']}   mode: {doc['mode']}   "
            f"vendor: {doc['vendor']}   vcpus: {doc['vcpus']}"]
    if doc.get("inferred"):
        head.append(f"note: {doc['inferred']}")
    nested = doc["mode"] == "nested-tdp"
    cols = ("#", "cpu", *(("lvl",) if nested else ()), "event", "exit", "fault", "current", "source",
            "prev_roots", "freed", "requests", "flushes", *(("root_mmu", "guest_mmu") if nested else ()))
    rows = []
    for s, ev in zip(doc["steps"], events):
        n = s.get("nested")
        rows.append((
            str(s["index"]), str(s["vcpu"]), *((n["level"],) if nested else ()), event_label(ev),
            _exit(s, ev),
            s["fault"] or "-",
            _root(s["root"]), s["root_source"],
            " ".join(_root(p) for p in s["prev_roots"]),
            " ".join(f"#{f['id']}" for f in s["freed"]) or "-",
            " ".join(_short_req(r) for r in s["requests"]) or "-",
            " ".join(s["tlb_flushes"]) or "-",
            *((_root(n["root_mmu"]["root"]), _root(n["guest_mmu"]["root"])) if nested else ()),
        ))
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = head + ["", fmt.format(*cols).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    lines += [fmt.format(*r).rstrip() for r in rows]
    notes = [f"  step {s['index']}: {s['reason']}" for s in doc["steps"] if s.get("reason")]
    for s in doc["steps"]:
        for v in s.get("violations", ()):
            when = (f"; step {v['invalidated_by_step']} should have invalidated it"
                    if v["invalidated_by_step"] is not None else "")
            if v.get("kind") == "ept":
                notes.append(f"  step {s['index']}: VIOLATION vCPU {v['vcpu']} L2 page {v['addr']}: "
                             f"L2 can use {v['stale']} from the {v['source']}, L1's EPT table says "
                             f"{v['expected']}{when}")
                continue
            notes.append(f"  step {s['index']}: VIOLATION vCPU {v['vcpu']} {v['addr']} (PCID "
                         f"{v['pcid']}): the guest can use {v['stale']} from the {v['source']}, "
                         f"its tables say {v['expected']}{when}")
        notes += [f"  step {s['index']}: INVARIANT {p}" for p in s.get("invariants", ())]
    if notes:
        lines += ["", "notes:"] + notes
    t = doc["totals"]
    lines += ["", "totals: " + "  ".join(f"{k}={v}" for k, v in t.items())]
    return "\n".join(lines)


def step_graph(step: dict) -> str:
    """One step's kernel calls in ftrace function_graph form."""
    return function_graph(list(zip(step["call_depth"], step["calls"])))


def source_id(source: str) -> str:
    """What identifies a source: its commit id or Message-ID, else its words up
    to the first parenthesis ("v5.15 tree (torvalds/linux ...)" -> "v5.15 tree")."""
    first = source.split()[0]
    if first.startswith("<") or (len(first) >= 7 and all(c in "0123456789abcdef" for c in first)):
        return first
    return source.split(" (")[0]


def eras_table(eras, verbose: bool = False, width: int = 100) -> str:
    """A block per era, within ``width`` columns: the name, kernel range and
    kind on one line; what characterises it; the commits and Message-IDs that
    define it (``verbose``: each source in full, and what is inferred)."""
    import textwrap
    wrap = textwrap.TextWrapper(width=width, initial_indent="  ", subsequent_indent="    ",
                                break_on_hyphens=False, break_long_words=False)
    blocks = []
    for e in eras:
        head = f"{e.name:<22} {e.kernel}"
        if e.parent:
            head += f"   (variant of {e.parent})"
        if e.inferred:
            head += "   [partly inferred]"
        lines = [head] + wrap.wrap(e.summary.rstrip(".") + ".")
        lines += wrap.wrap("defined by: " + ", ".join(source_id(s) for s in e.sources))
        if verbose:
            for s in e.sources:
                lines += wrap.wrap("- " + s)
            if e.inferred:
                lines += wrap.wrap("inferred: " + e.inferred)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)