"""Running a scenario file in constant memory: events are read one at a time
and each step's outcome is written as soon as it is computed.

:func:`open_stream` validates the whole file first (bad input still prints
nothing and changes nothing), without keeping its events: it reads the file
in chunks and decodes one event at a time.  Anything it does not expect (a
syntax error, an invalid field, a duplicate ``events`` key) hands the file to
``load_scenario``, which raises the usual ScenarioError (or, should the file
be valid after all, returns it whole).

:func:`write_json` writes the contract-1 document byte for byte as
``json.dumps(doc, indent=2)`` does; :func:`write_jsonl` writes one JSON object
per line: a header, one line per step, then the totals.
"""
from __future__ import annotations

import json
from json import JSONDecodeError
from pathlib import Path

from .scenario import (
    MAX_EVENTS,
    MAX_VCPUS,
    NESTED_OPS,
    Scenario,
    load_scenario,
    parse_event,
    parse_scenario,
)

try:                    # optional: the same bytes as the json module, ~20x faster
    import orjson
except ImportError:     # pragma: no cover
    orjson = None

_CHUNK = 1 << 20
_MEMO_MAX = 1 << 16     # distinct event texts remembered: workloads repeat themselves


class _Unexpected(Exception):
    """The file is not the plain shape the stream reader walks."""


class _Reader:
    """A JSON text read in chunks: just enough to walk one top-level object."""

    def __init__(self, f):
        self.f, self.buf, self.pos, self.eof = f, "", 0, False
        self.decode = json.JSONDecoder().raw_decode

    def _fill(self) -> bool:
        if self.eof:
            return False
        more = self.f.read(_CHUNK)
        if not more:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + more
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n and buf[pos] in " \t\n\r":
                pos += 1
            self.pos = pos
            if pos < n:
                return buf[pos]
            if not self._fill():
                return ""

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise _Unexpected
        self.pos += 1
        return c

    def value(self):
        """(value, its text) at the current position."""
        self.peek()
        while True:
            try:
                value, end = self.decode(self.buf, self.pos)
            except JSONDecodeError:
                if self._fill():
                    continue
                raise _Unexpected from None
            if end == len(self.buf) and self._fill():
                continue                # a number may go on in the next chunk
            text = self.buf[self.pos:end]
            self.pos = end
            return value, text

    def event(self, memo: dict, vcpus: int, index: int) -> dict:
        """The next event, normalised; a text seen before is not decoded again
        (a remembered text is a whole JSON object, so it decodes the same here)."""
        self.peek()
        end = self.buf.find("}", self.pos)
        if end >= 0:
            hit = memo.get(self.buf[self.pos:end + 1])
            if hit is not None:
                self.pos = end + 1
                return hit
        raw, text = self.value()
        ev = parse_event(raw, f"events[{index}]", vcpus)
        if len(memo) < _MEMO_MAX:
            memo[text] = ev
        return ev


def _walk(path, head: dict, memo: dict, vcpus: int):
    """Yield the normalised events of the scenario object in ``path``; fill
    ``head`` with its other fields."""
    seen_events = False
    with open(path) as f:
        r = _Reader(f)
        r.expect("{")
        if r.peek() == "}":
            r.expect("}")
        else:
            while True:
                key = r.value()[0]
                if not isinstance(key, str):
                    raise _Unexpected
                r.expect(":")
                if key == "events":
                    if seen_events or r.peek() != "[":
                        raise _Unexpected
                    seen_events = True
                    r.expect("[")
                    if r.peek() == "]":
                        r.expect("]")
                    else:
                        i = 0
                        while True:
                            yield r.event(memo, vcpus, i)
                            i += 1
                            if r.expect(",]") == "]":
                                break
                else:
                    head[key] = r.value()[0]
                if r.expect(",}") == "}":
                    break
        if r.peek() != "":
            raise _Unexpected


class ScenarioStream:
    """A validated scenario whose events come from its file on demand."""

    def __init__(self, scenario: Scenario, path=None, count: int = 0, memo=None):
        self.scenario = scenario        # with no events when they stay in ``path``
        self.path = path
        self.count = len(scenario.events) if path is None else count
        self._memo = memo

    def events(self):
        """The normalised events in order, read again from the file."""
        if self.path is None:
            return iter(self.scenario.events)
        return _walk(self.path, {}, self._memo, self.scenario.vcpus)


def open_stream(path) -> ScenarioStream:
    """Validate the scenario file ``path`` as load_scenario does, keeping none
    of its events in memory; ScenarioError for any problem."""
    p = Path(path)
    if not p.is_file():
        return ScenarioStream(load_scenario(path))
    head, memo = {}, {}
    try:
        # Pass 1: every event checked against the loosest vCPU count; the real
        # count (and the mode, for L1's ops) may come after the events.
        count = top = 0
        nested = False
        for ev in _walk(p, head, memo, MAX_VCPUS):
            count += 1
            top = max(top, ev["vcpu"])
            nested = nested or ev["op"] in NESTED_OPS
        if count > MAX_EVENTS:
            raise _Unexpected
        scenario = parse_scenario({**head, "events": []}, default_name=p.stem)
        if top >= scenario.vcpus or nested and scenario.mode != "nested-tdp":
            raise _Unexpected
    except (_Unexpected, ValueError, OSError, UnicodeDecodeError):
        # ScenarioError is a ValueError: load_scenario words it as usual.
        return ScenarioStream(load_scenario(path))
    return ScenarioStream(scenario, p, count, memo)


# ---------------------------------------------------------------------------
# Writing

def _indented(obj) -> bytes:
    """``json.dumps(obj, indent=2)`` as bytes."""
    if orjson is not None:
        out = orjson.dumps(obj, option=orjson.OPT_INDENT_2)
        if out.isascii():           # json.dumps escapes the rest as \\uXXXX
            return out
    return json.dumps(obj, indent=2).encode()


def _line(obj) -> bytes:
    """One compact JSON line (UTF-8)."""
    if orjson is not None:
        return orjson.dumps(obj) + b"\n"
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class _Batched:
    """Writes gathered into blocks of about 256 KiB (one system call each)."""
    __slots__ = ("out", "parts", "size")

    def __init__(self, out):
        self.out, self.parts, self.size = out, [], 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= 1 << 18:
            self.flush()

    def flush(self) -> None:
        self.out.write(b"".join(self.parts))
        self.parts, self.size = [], 0


def write_json(out, head: dict, steps, tail) -> None:
    """Write ``{**head, "steps": [...], **tail()}`` to the binary stream ``out``
    as ``json.dumps(indent=2)`` and print() would, one step at a time
    (``tail`` is called after the last step)."""
    out = _Batched(out)
    start = _indented({**head, "steps": []})
    out.write(start[:-len(b"[]\n}")])           # ... "steps": 
    sep = b"[\n    "
    for step in steps:
        out.write(sep)
        out.write(_indented(step).replace(b"\n", b"\n    "))
        sep = b",\n    "
    out.write(b"[]" if sep == b"[\n    " else b"\n  ]")
    end = _indented(tail())
    out.write(b"," + end[1:] + b"\n")
    out.flush()


def write_jsonl(out, head: dict, steps, tail) -> None:
    """A line with ``head``, one line per step, then a line with ``tail()``."""
    out = _Batched(out)
    out.write(_line(head))
    for step in steps:
        out.write(_line(step))
    out.write(_line(tail()))
    out.flush()
