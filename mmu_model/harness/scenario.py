"""Scenario files: parse and validate, with errors that name the JSON path.

The format is the project's contract (docs/contract.md): a scenario names a
mode, a vendor, a vCPU count, start registers (values or a preset) and a list
of events.  Parsing never raises anything but :class:`ScenarioError`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..kernel.registers import PRESETS, REGISTER_FLAGS

MODES = ("shadow", "tdp", "tdp-legacy", "nested-tdp")
VENDORS = ("vmx", "svm")
MAX_VCPUS = 64
MAX_EVENTS = 1_000_000

# op -> (required fields, optional fields)
OPS = {
    "mov_cr0": ((), ("value", "set", "clear")),
    "mov_cr4": ((), ("value", "set", "clear")),
    "mov_cr3": (("value",), ()),
    "wrmsr_efer": ((), ("value", "set", "clear", "host")),
    "invpcid": (("type",), ("pcid", "addr")),
    "invlpg": (("addr",), ()),
    "smi": ((), ()),
    "rsm": ((), ()),
    "set_sregs": ((), ("cr0", "cr3", "cr4", "efer")),
    "init": ((), ()),
    "access": (("addr",), ("write", "user", "fetch")),
    "write_pte": (("cr3", "addr", "value"), ()),
    # nested-tdp only: L1's side of running L2
    "vmentry": ((), ("eptp", "vpid")),
    "vmexit": ((), ()),
    "invept": (("type",), ("eptp",)),
    "invvpid": (("type",), ("vpid", "addr")),
    "write_ept": (("eptp", "gpa", "value"), ()),
}
NESTED_OPS = ("vmentry", "vmexit", "invept", "invvpid", "write_ept")
REG_OF_OP = {"mov_cr0": "cr0", "mov_cr4": "cr4", "wrmsr_efer": "efer"}


class ScenarioError(ValueError):
    """Invalid input: ``path`` is the JSON path of the offending value."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass
class Scenario:
    name: str
    description: str = ""
    mode: str = "shadow"
    vendor: str = "vmx"
    vcpus: int = 1
    start: dict = field(default_factory=dict)       # cr0, cr3, cr4, efer as ints
    start_preset: str | None = None
    events: list = field(default_factory=list)      # normalised event dicts
    era: str | None = None
    story: str = ""                                 # presets from history: what happened
    links: list = field(default_factory=list)       # commits, Message-IDs, URLs

    def to_json(self) -> dict:
        """The scenario as a contract file (values in hex)."""
        start = self.start_preset or {k: hex(v) for k, v in self.start.items()}
        out = {"name": self.name, "description": self.description, "mode": self.mode,
               "vendor": self.vendor, "vcpus": self.vcpus, "start": start,
               "events": [event_to_json(e) for e in self.events]}
        if self.era:
            out["era"] = self.era
        if self.story:
            out["story"] = self.story
        if self.links:
            out["links"] = list(self.links)
        return out


def event_to_json(e: dict) -> dict:
    out = {}
    for k, v in e.items():
        if k == "vcpu" and v == 0:
            continue
        if isinstance(v, int) and not isinstance(v, bool) and k in ("value", "cr0", "cr3", "cr4",
                                                                    "efer", "addr", "eptp",
                                                                    "gpa"):
            v = hex(v)
        out[k] = v
    return out


def _int(value: Any, path: str, bits: int = 64) -> int:
    if isinstance(value, bool):
        raise ScenarioError(path, f"expected an integer or hex string, got {json.dumps(value)}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        try:
            n = int(value, 0)
        except ValueError:
            raise ScenarioError(path, f"not a number: {value!r} "
                                      "(use an integer or a string like \"0x1000\")") from None
    else:
        raise ScenarioError(path, f"expected an integer or hex string, got {json.dumps(value)}")
    if n < 0 or n >> bits:
        raise ScenarioError(path, f"{value!r} does not fit in {bits} unsigned bits")
    return n


def _bits(value: Any, reg: str, path: str) -> int:
    if not isinstance(value, list):
        raise ScenarioError(path, f"expected a list of {reg.upper()} bit names")
    flags = REGISTER_FLAGS[reg]
    out = 0
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in flags.__members__:
            raise ScenarioError(f"{path}[{i}]", f"unknown {reg.upper()} bit {name!r} "
                                f"(expected one of: {' '.join(flags.__members__)})")
        out |= int(flags[name])
    return out


def _check_keys(obj: dict, allowed, path: str):
    for k in obj:
        if k not in allowed:
            raise ScenarioError(f"{path}.{k}" if path else k,
                                f"unknown field {k!r} (expected one of: {', '.join(allowed)})")


def parse_event(raw: Any, path: str, vcpus: int) -> dict:
    """One event, normalised: ints for values, bit masks for set/clear."""
    if not isinstance(raw, dict):
        raise ScenarioError(path, "expected an object with an \"op\" field")
    op = raw.get("op")
    if op not in OPS:
        raise ScenarioError(f"{path}.op", f"unknown op {op!r} (expected one of: {', '.join(OPS)})")
    required, optional = OPS[op]
    _check_keys(raw, ("op", "vcpu", *required, *optional), path)
    for k in required:
        if k not in raw:
            raise ScenarioError(f"{path}.{k}", f"missing: {op} needs {k!r}")
    ev = {"op": op, "vcpu": 0}
    if "vcpu" in raw:
        v = raw["vcpu"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vcpus:
            raise ScenarioError(f"{path}.vcpu", f"vCPU {v!r} does not exist (the scenario has {vcpus})")
        ev["vcpu"] = v
    reg = REG_OF_OP.get(op)
    if reg:
        has_value = "value" in raw
        if has_value == ("set" in raw or "clear" in raw):
            raise ScenarioError(path, f"{op} needs either \"value\" or \"set\"/\"clear\"")
        if has_value:
            ev["value"] = _int(raw["value"], f"{path}.value")
        for k in ("set", "clear"):
            if k in raw:
                ev[k] = _bits(raw[k], reg, f"{path}.{k}")
        if "host" in raw:
            if not isinstance(raw["host"], bool):
                raise ScenarioError(f"{path}.host", "expected true or false")
            ev["host"] = raw["host"]
    elif op == "mov_cr3":
        ev["value"] = _int(raw["value"], f"{path}.value")
    elif op == "invlpg":
        ev["addr"] = _int(raw["addr"], f"{path}.addr")
    elif op == "invpcid":
        ev["type"] = _int(raw["type"], f"{path}.type")
        ev["pcid"] = _int(raw.get("pcid", 0), f"{path}.pcid")
        ev["addr"] = _int(raw.get("addr", 0), f"{path}.addr")
    elif op == "access":
        ev["addr"] = _int(raw["addr"], f"{path}.addr")
        for k in ("write", "user", "fetch"):
            if k in raw:
                if not isinstance(raw[k], bool):
                    raise ScenarioError(f"{path}.{k}", "expected true or false")
                ev[k] = raw[k]
    elif op == "write_pte":
        for k in ("cr3", "addr", "value"):
            ev[k] = _int(raw[k], f"{path}.{k}")
    elif op == "vmentry":
        if "eptp" in raw:
            ev["eptp"] = _int(raw["eptp"], f"{path}.eptp")
        if "vpid" in raw:
            ev["vpid"] = _int(raw["vpid"], f"{path}.vpid", 16)
    elif op == "invept":
        ev["type"] = _int(raw["type"], f"{path}.type")
        ev["eptp"] = _int(raw.get("eptp", 0), f"{path}.eptp")
    elif op == "invvpid":
        ev["type"] = _int(raw["type"], f"{path}.type")
        ev["vpid"] = _int(raw.get("vpid", 0), f"{path}.vpid")
        ev["addr"] = _int(raw.get("addr", 0), f"{path}.addr")
    elif op == "write_ept":
        for k in ("eptp", "gpa", "value"):
            ev[k] = _int(raw[k], f"{path}.{k}")
    elif op == "set_sregs":
        if not any(k in raw for k in ("cr0", "cr3", "cr4", "efer")):
            raise ScenarioError(path, "set_sregs needs at least one of cr0, cr3, cr4, efer")
        for k in ("cr0", "cr3", "cr4", "efer"):
            if k in raw:
                ev[k] = _int(raw[k], f"{path}.{k}")
    return ev


def parse_start(raw: Any) -> tuple[dict, str | None]:
    if isinstance(raw, str):
        if raw not in PRESETS:
            raise ScenarioError("start", f"unknown preset {raw!r} (expected one of: {', '.join(PRESETS)})")
        p = PRESETS[raw]
        return {"cr0": p.cr0, "cr3": p.cr3, "cr4": p.cr4, "efer": p.efer}, raw
    if not isinstance(raw, dict):
        raise ScenarioError("start", "expected a preset name or an object with cr0, cr3, cr4, efer")
    _check_keys(raw, ("cr0", "cr3", "cr4", "efer"), "start")
    base = PRESETS["reset"]
    start = {"cr0": base.cr0, "cr3": base.cr3, "cr4": base.cr4, "efer": base.efer}
    for k in start:
        if k in raw:
            start[k] = _int(raw[k], f"start.{k}")
    return start, None


def parse_scenario(data: Any, default_name: str = "scenario") -> Scenario:
    """Validate a decoded scenario document; raise ScenarioError naming the path."""
    if not isinstance(data, dict):
        raise ScenarioError("$", "a scenario is a JSON object")
    _check_keys(data, ("name", "description", "story", "links", "mode", "vendor", "vcpus", "start",
                       "events", "era"), "")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ScenarioError("name", "expected a non-empty string")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        raise ScenarioError("description", "expected a string")
    mode = data.get("mode", "shadow")
    if mode not in MODES:
        raise ScenarioError("mode", f"unknown mode {mode!r} (expected one of: {', '.join(MODES)})")
    vendor = data.get("vendor", "vmx")
    if vendor not in VENDORS:
        raise ScenarioError("vendor", f"unknown vendor {vendor!r} (expected one of: {', '.join(VENDORS)})")
    vcpus = data.get("vcpus", 1)
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise ScenarioError("vcpus", f"expected an integer from 1 to {MAX_VCPUS}")
    story = data.get("story", "")
    if not isinstance(story, str):
        raise ScenarioError("story", "expected a string")
    links = data.get("links", [])
    if not isinstance(links, list) or not all(isinstance(x, str) for x in links):
        raise ScenarioError("links", "expected a list of strings (commits, Message-IDs, URLs)")
    era = data.get("era")
    if era is not None and not isinstance(era, str):
        raise ScenarioError("era", "expected an era name")
    start, preset = parse_start(data.get("start", "reset"))
    events = data.get("events", [])
    if not isinstance(events, list):
        raise ScenarioError("events", "expected a list of events")
    if len(events) > MAX_EVENTS:
        raise ScenarioError("events", f"at most {MAX_EVENTS} events")
    parsed = [parse_event(e, f"events[{i}]", vcpus) for i, e in enumerate(events)]
    for i, ev in enumerate(parsed):
        if ev["op"] in NESTED_OPS and mode != "nested-tdp":
            raise ScenarioError(f"events[{i}].op", f"{ev['op']} is L1 running L2: it needs "
                                f"\"mode\": \"nested-tdp\" (the scenario's mode is {mode!r})")
    return Scenario(name, desc, mode, vendor, vcpus, start, preset, parsed, era, story, links)


def library() -> Traversable:
    """The scenario library shipped in the package (``mmu_model/scenarios``):
    found through the package's resources, so it works from a source tree, an
    installed wheel and Pyodide alike."""
    return files("mmu_model") / "scenarios"


def library_names() -> list[str]:
    """Every library scenario by name (``pcid-lru``, ``history/grsecurity-wp``, ...),
    in the order of their file names: the top folder first, then each subfolder."""
    files_ = [e.name for e in library().iterdir() if e.name.endswith(".json")]
    names = [f[:-5] for f in sorted(files_)]
    for folder in sorted((e for e in library().iterdir() if e.is_dir()), key=lambda e: e.name):
        names += [f"{folder.name}/{f[:-5]}" for f in
                  sorted(e.name for e in folder.iterdir() if e.name.endswith(".json"))]
    return names


def _library_file(name: str):
    """The library entry for ``name`` (e.g. ``pcid-lru``), or None."""
    if name.endswith(".json") or name.startswith(("/", ".")):
        return None
    entry = library().joinpath(*f"{name}.json".split("/"))
    return entry if entry.is_file() else None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError for any problem.

    ``path`` is a file, or the name of a library scenario (``pcid-lru``,
    ``history/grsecurity-wp``) when no such file exists."""
    p = Path(path)
    entry = None if p.exists() else _library_file(str(path))
    try:
        text = entry.read_text() if entry is not None else p.read_text()
    except OSError as err:
        raise ScenarioError("$", f"cannot read the file: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ScenarioError("$", f"not valid JSON: {err.msg} at line {err.lineno} "
                                 f"column {err.colno}") from None
    return parse_scenario(data, default_name=p.stem)
