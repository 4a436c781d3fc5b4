"""Scenario files: parse and validate, with errors that name the JSON path.

The format is the project's contract (docs/contract.md): a scenario names a
mode, a vendor, a vCPU count, start registers (values or a preset) and a list
of events.  Parsing never raises anything but :class:`ScenarioError`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import reprlib
import stat
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..kernel.registers import PRESETS, REGISTER_FLAGS

MODES = ("shadow", "tdp", "tdp-legacy", "nested-tdp")
VENDORS = ("vmx", "svm")
# Limits, checked before any work starts, each what the project's machines (2
# shared cores) finish in reasonable time; README, "The command line", states
# them with the measurements.
MAX_VCPUS = 64
MAX_EVENTS = 100_000            # `run --json` of this many: 30 s and 1.8 GB (idle)
MAX_FILE_BYTES = 16 << 20       # 100,000 events indented take 6.6 MB
MAX_JSON_DEPTH = 100            # a scenario needs 4; reported when the parser gives up

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
    """Invalid input: ``path`` says where (a JSON path, an argument, ``$`` for
    the whole file) and ``message`` what is wrong; ``str()`` is one printable
    line, ``"path: message"``.  It is the only exception bad input raises, from
    the scenario parser, :class:`~mmu_model.Simulation`, the analyses' entry
    points and the command line (which prints it and exits 2)."""

    def __init__(self, path: str, message: str):
        path, message = one_line(str(path)), one_line(str(message))
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def one_line(text: str) -> str:
    """``text`` with every unprintable character (newline, escape, a lone
    surrogate...) written as its backslash escape: an error stays one line and
    cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineParser(argparse.ArgumentParser):
    """argparse for the project's commands: a usage error is ScenarioError
    (``prog: --flag: what``), which the command line prints as one line and
    exits 2, instead of argparse's usage block."""

    def error(self, message):
        where, what = self.prog, message
        m = re.fullmatch(r"argument ([^:]+): (.*)", message, re.S)
        if m:
            where, what = f"{self.prog}: {m.group(1)}", m.group(2)
            choice = re.fullmatch(r"invalid choice: (.*) \(choose from (.*)\)", what, re.S)
            if choice:
                options = ", ".join(o.strip(" '") for o in choice.group(2).split(","))
                what = f"invalid choice {choice.group(1)} (choose from {options})"
        raise ScenarioError(where, _bounded(what))


def _bounded(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxdict = 4
_repr.maxlevel = 3


def show(value: Any, python: bool = False) -> str:
    """A bounded repr of input for an error message (a 1 MB string or a list
    nested 900 deep stays a few dozen characters); true, null and NaN as a
    JSON file writes them unless ``python`` (an argument of the Python API)."""
    if not python and (isinstance(value, (bool, float)) or value is None):
        return json.dumps(value)
    return _repr.repr(value)


class _LongInt:
    """An integer literal too long to convert (Python refuses more than 4300
    digits); validation reports it where it stands."""

    def __init__(self, digits: str):
        self.digits = len(digits.lstrip("-"))

    def __repr__(self):
        return f"<an integer of {self.digits} digits>"


class _DuplicateKeys(dict):
    """A JSON object that gave a key more than once (``duplicate`` names it)."""
    duplicate: str = ""


def _pairs(pairs):
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    d = _DuplicateKeys(d)
    seen = set()
    for k, _value in pairs:
        if k in seen:
            d.duplicate = k
            return d
        seen.add(k)


def _parse_int(digits: str):
    return int(digits) if len(digits) <= 100 else _LongInt(digits)


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


# The number strings a scenario may use: ASCII digits and letters only (no
# sign, space, underscore or other script's digits, all of which int() takes).
_NUMBER = re.compile(r"[0-9A-Za-z]+", re.ASCII)


def _int(value: Any, path: str, bits: int = 64) -> int:
    if isinstance(value, _LongInt):
        raise ScenarioError(path, f"an integer of {value.digits} digits does not fit in {bits} "
                                  "unsigned bits")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ScenarioError(path, f"expected an integer or hex string, got {show(value)}")
    if isinstance(value, int):
        n = value
    else:
        try:
            if not _NUMBER.fullmatch(value):
                raise ValueError
            n = int(value, 0)
        except ValueError:
            if value.isascii() and value.isdigit() and len(value) > 100:
                raise ScenarioError(path, f"a number of {len(value)} digits does not fit in "
                                          f"{bits} unsigned bits") from None
            raise ScenarioError(path, f"not a number: {show(value)} (use an integer or an "
                                      "ASCII string like \"0x1000\": no sign, space or "
                                      "underscore)") from None
    if n < 0 or n >> bits:
        raise ScenarioError(path, f"{show(value)} does not fit in {bits} unsigned bits")
    return n


def _bits(value: Any, reg: str, path: str) -> int:
    if not isinstance(value, list):
        raise ScenarioError(path, f"expected a list of {reg.upper()} bit names")
    flags = REGISTER_FLAGS[reg]
    out = 0
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in flags.__members__:
            raise ScenarioError(f"{path}[{i}]", f"unknown {reg.upper()} bit {show(name)} "
                                f"(expected one of: {' '.join(flags.__members__)})")
        out |= int(flags[name])
    return out


def _check_keys(obj: dict, allowed, path: str):
    dup = getattr(obj, "duplicate", None)
    if dup is not None:
        raise ScenarioError(_field(path, dup), f"duplicate key {show(dup)}: the object gives "
                                               "it more than once")
    for k in obj:
        if k not in allowed:
            raise ScenarioError(_field(path, k),
                                f"unknown field {show(k)} (expected one of: {', '.join(allowed)})")


def _field(path: str, key) -> str:
    """The JSON path of ``key`` in the object at ``path``."""
    key = key if isinstance(key, str) and len(key) <= 60 else show(key)
    return f"{path}.{key}" if path else key


def parse_event(raw: Any, path: str, vcpus: int) -> dict:
    """One event, normalised: ints for values, bit masks for set/clear."""
    if not isinstance(raw, dict):
        raise ScenarioError(path, "expected an object with an \"op\" field")
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        what = f"unknown op {show(op)}" if "op" in raw else "missing: every event needs an op"
        raise ScenarioError(f"{path}.op", f"{what} (expected one of: {', '.join(OPS)})")
    required, optional = OPS[op]
    _check_keys(raw, ("op", "vcpu", *required, *optional), path)
    for k in required:
        if k not in raw:
            raise ScenarioError(f"{path}.{k}", f"missing: {op} needs {k!r}")
    ev = {"op": op, "vcpu": 0}
    if "vcpu" in raw:
        v = raw["vcpu"]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ScenarioError(f"{path}.vcpu", f"expected a vCPU index (an integer), got {show(v)}")
        if not 0 <= v < vcpus:
            raise ScenarioError(f"{path}.vcpu", f"vCPU {show(v)} does not exist (the scenario has "
                                f"{vcpus})")
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
            raise ScenarioError("start", f"unknown preset {show(raw)} "
                                         f"(expected one of: {', '.join(PRESETS)})")
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


def check_choice(value: Any, choices, path: str, python: bool = False):
    """ScenarioError unless ``value`` is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ScenarioError(path, f"unknown {path} {show(value, python)} "
                                  f"(expected one of: {', '.join(choices)})")


def _check_text(name, desc, story, era, links):
    """Strings a table prints must be text: JSON's \\ud800 escapes give lone
    surrogates, which no terminal encoding can write."""
    fields = [("name", name), ("description", desc), ("story", story), ("era", era or "")]
    for where, text in fields + [(f"links[{i}]", x) for i, x in enumerate(links)]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ScenarioError(where, f"not text: a lone surrogate {show(text[err.start])} at "
                                       f"character {err.start}") from None


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
    check_choice(mode, MODES, "mode")
    vendor = data.get("vendor", "vmx")
    check_choice(vendor, VENDORS, "vendor")
    vcpus = data.get("vcpus", 1)
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise ScenarioError("vcpus", f"expected an integer from 1 to {MAX_VCPUS}, got {show(vcpus)}")
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
        raise ScenarioError("events", f"{len(events):,} events; a scenario has at most "
                                      f"{MAX_EVENTS:,}")
    _check_text(name, desc, story, era, links)
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
    text = decode(entry.read_bytes()) if entry is not None else read_text(p)
    return parse_scenario(parse_json(text), default_name=p.stem)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; ScenarioError
    otherwise (a FIFO would block for ever, a device might never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ScenarioError("$", f"cannot read the file: {err.strerror}") from None
    except ValueError:
        raise ScenarioError("$", "cannot read the file: its name contains a NUL byte") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
            raise ScenarioError("$", f"not a regular file ({kind})")
        if st.st_size > MAX_FILE_BYTES:
            raise ScenarioError("$", f"the file has {st.st_size:,} bytes; at most "
                                     f"{MAX_FILE_BYTES:,} are read")
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                return data
            data += chunk
        raise ScenarioError("$", f"the file grew past {MAX_FILE_BYTES:,} bytes while it was read")
    except OSError as err:
        raise ScenarioError("$", f"cannot read the file: {err.strerror}") from None
    finally:
        os.close(fd)


def read_text(path: str | Path) -> str:
    """The text of a scenario file: read_bytes(), in UTF-8."""
    return decode(read_bytes(path))


def decode(data: bytes) -> str:
    """A scenario file's bytes as text; ScenarioError unless they are UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise ScenarioError("$", f"not UTF-8: byte {data[err.start]:#04x} at line {line} column "
                                 f"{column} (a scenario file is UTF-8 text)") from None


def parse_json(text: str) -> Any:
    """Decode a scenario's JSON; a key given twice is marked for validation to
    report, an integer literal too long to convert stays a marker, and nesting
    past the parser's depth is ScenarioError."""
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int)
    except json.JSONDecodeError as err:
        raise ScenarioError("$", f"not valid JSON: {err.msg} at line {err.lineno} "
                                 f"column {err.colno}") from None
    except RecursionError:
        raise ScenarioError("$", _too_deep(text)) from None


def _too_deep(text: str) -> str:
    blank = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: "_" * len(m.group()), text)
    depth = 0
    for m in re.finditer(r"[\[\]{}]", blank):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            at = m.start()
            line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
            return (f"arrays and objects nested more than {MAX_JSON_DEPTH} deep at line {line} "
                    f"column {column} (a scenario nests at most 4 deep)")
    return "arrays and objects nested too deeply to parse (a scenario nests at most 4 deep)"
