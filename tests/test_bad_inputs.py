"""Bad input, measured: every case is answered by one line naming what is
wrong and where, exit status 2, nothing on stdout, no traceback; the Python
API raises ScenarioError with the same message.

The corpus: the files in tests/bad_inputs/ (one bad scenario each, with the
message it must get in FILE_CASES), the --variants files in
tests/bad_inputs/variants/, and cases generated here where a file would be
huge or is not a file (a FIFO, /dev/zero, a 100 GiB sparse file, JSON nested
100,000 deep, 1,000,000 events).  Most cases call ``mmu_model.cli.main`` in
this process; the ones about pipes, FIFOs, devices and sys.exit run the
command line as a subprocess.  The session ends with the figure
``N bad inputs, N answered in one line``, counted from the cases that ran.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from conftest import ROOT

import mmu_model
from mmu_model import ScenarioError, Simulation, load_scenario, parse_scenario
from mmu_model.analysis import ablate, search
from mmu_model.classroom import quiz
from mmu_model.cli import main
from mmu_model.harness import scenario as scenario_module

CORPUS = Path(__file__).parent / "bad_inputs"
VARIANTS = CORPUS / "variants"
SCENARIO = str(ROOT / "scenarios" / "cr0-wp-toggle.json")     # a good scenario (has a reset)
MAX_EVENTS = scenario_module.MAX_EVENTS

# case id -> answered in one line (exit 2, one printable stderr line, stdout
# empty, no traceback) and with the expected message; filled as cases run.
RESULTS: dict[str, bool] = {}


class _Figure:
    def pytest_terminal_summary(self, terminalreporter):
        if RESULTS:
            terminalreporter.write_line(f"{len(RESULTS)} bad inputs, "
                                        f"{sum(RESULTS.values())} answered in one line")


@pytest.fixture(autouse=True, scope="module")
def _report_the_figure(request):
    manager = request.config.pluginmanager
    if not manager.has_plugin("bad-inputs-figure"):
        manager.register(_Figure(), "bad-inputs-figure")


def in_process(*argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def subprocess_cli(*argv, **kwargs):
    r = subprocess.run([sys.executable, "-m", "mmu_model", *map(str, argv)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, **kwargs)
    return r.returncode, r.stdout, r.stderr


def answered(case: str, status, out, err, expected: str) -> None:
    """Record and assert: exit 2, nothing on stdout, one printable line on
    stderr (no traceback) that starts with ``expected``."""
    line = err[:-1]
    ok = (status == 2 and out == "" and err.endswith("\n") and "\n" not in line
          and line.isprintable() and "Traceback" not in err and line.startswith(expected))
    RESULTS[case] = ok
    assert ok, f"exit {status}, stdout {out[:200]!r}, stderr {err[:600]!r}; expected {expected!r}"


def raises(case: str, call, expected: str) -> None:
    """Record and assert: ``call()`` raises ScenarioError whose one-line message
    starts with ``expected`` (and nothing else escapes)."""
    try:
        call()
    except ScenarioError as err:
        ok = str(err).startswith(expected) and str(err).isprintable()
        RESULTS[case] = ok
        assert ok, f"{err!s} does not start with {expected!r}"
    except Exception as err:
        RESULTS[case] = False
        raise AssertionError(f"{type(err).__name__}: {err}, not ScenarioError") from err
    else:
        RESULTS[case] = False
        raise AssertionError("no error raised")


# ---------------------------------------------------------------------------
# Files: `run FILE`, and load_scenario(FILE) with the same message
OPS_LIST = "(expected one of: mov_cr0, mov_cr4, mov_cr3,"
NUMBER = "(use an integer or an ASCII string like \"0x1000\": no sign, space or underscore)"
FILE_CASES = {
    # bytes and syntax
    "not-utf8.json": "$: not UTF-8: byte 0xe9 at line 1 column 14",
    "utf16.json": "$: not UTF-8: byte 0xff at line 1 column 1",
    "bom.json": "$: not valid JSON: Unexpected UTF-8 BOM",
    "empty.json": "$: not valid JSON: Expecting value at line 1 column 1",
    "nul-bytes.json": "$: not valid JSON: Extra data at line 1 column 15",
    "truncated.json": "$: not valid JSON: Expecting ',' delimiter at line 1 column 26",
    "trailing-garbage.json": "$: not valid JSON: Extra data at line 1 column 16",
    "single-quotes.json": "$: not valid JSON: Expecting property name enclosed in double quotes",
    "comment.json": "$: not valid JSON: Expecting value at line 1 column 1",
    "trailing-comma.json": "$: not valid JSON: Expecting value at line 1 column 27",
    "bigint-literal.json": "events[0].value: an integer of 5000 digits does not fit in 64 unsigned bits",
    "bigint-vcpus.json": "vcpus: expected an integer from 1 to 64, got <an integer of 4400 digits>",
    "nan-value.json": "events[0].value: expected an integer or hex string, got NaN",
    "infinity-vcpus.json": "vcpus: expected an integer from 1 to 64, got Infinity",
    "lone-surrogate-key.json": "events[0].\\ud800: unknown field '\\ud800' (expected one of: op, vcpu",
    "lone-surrogate-name.json": "name: not text: a lone surrogate '\\ud800' at character 0",
    "newline-in-key.json": "events[0].a\\nb: unknown field 'a\\nb'",
    "escape-in-key.json": "evnts\\x1b[2J: unknown field 'evnts\\x1b[2J'",
    "long-op.json": "events[0].op: unknown op 'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx' "
                    + OPS_LIST,
    # top level
    "top-list.json": "$: a scenario is a JSON object",
    "top-null.json": "$: a scenario is a JSON object",
    "top-string.json": "$: a scenario is a JSON object",
    "top-number.json": "$: a scenario is a JSON object",
    "unknown-field.json": "evnts: unknown field 'evnts' (expected one of: name, description,",
    "dup-mode.json": "mode: duplicate key 'mode': the object gives it more than once",
    "dup-events.json": "events: duplicate key 'events'",
    "dup-in-event.json": "events[0].value: duplicate key 'value'",
    "dup-in-start.json": "start.cr0: duplicate key 'cr0'",
    "dup-op.json": "events[0].op: duplicate key 'op'",
    # name, description, story, links, era
    "name-empty.json": "name: expected a non-empty string",
    "name-number.json": "name: expected a non-empty string",
    "name-null.json": "name: expected a non-empty string",
    "description-number.json": "description: expected a string",
    "story-list.json": "story: expected a string",
    "links-string.json": "links: expected a list of strings",
    "links-number-item.json": "links: expected a list of strings",
    "era-number.json": "era: expected an era name",
    "era-list.json": "era: expected an era name",
    "era-unknown.json": "era: unknown era 'v9.99' (expected one of: v5.15, v5.17,",
    # mode, vendor, vcpus
    "mode-ept.json": "mode: unknown mode 'ept' (expected one of: shadow, tdp, tdp-legacy, nested-tdp)",
    "mode-list.json": "mode: unknown mode ['tdp'] (expected one of:",
    "mode-object.json": "mode: unknown mode {'tdp': True} (expected one of:",
    "mode-null.json": "mode: unknown mode null (expected one of:",
    "vendor-arm.json": "vendor: unknown vendor 'arm' (expected one of: vmx, svm)",
    "vendor-list.json": "vendor: unknown vendor ['vmx'] (expected one of: vmx, svm)",
    "vcpus-zero.json": "vcpus: expected an integer from 1 to 64, got 0",
    "vcpus-negative.json": "vcpus: expected an integer from 1 to 64, got -1",
    "vcpus-10000.json": "vcpus: expected an integer from 1 to 64, got 10000",
    "vcpus-65.json": "vcpus: expected an integer from 1 to 64, got 65",
    "vcpus-string.json": "vcpus: expected an integer from 1 to 64, got '2'",
    "vcpus-bool.json": "vcpus: expected an integer from 1 to 64, got true",
    "vcpus-float.json": "vcpus: expected an integer from 1 to 64, got 1.0",
    # start
    "start-unknown-key.json": "start.rip: unknown field 'rip' (expected one of: cr0,",
    "start-number.json": "start: expected a preset name or an object",
    "start-list.json": "start: expected a preset name or an object",
    "start-unknown-preset.json": "start: unknown preset 'longmode' (expected one of: reset,",
    "start-invalid-state.json": "start: not a valid starting state: EFER.LME with CR0.PG needs CR4.PAE",
    "start-underscore.json": f"start.cr3: not a number: '0x1_000' {NUMBER}",
    "start-too-big.json": "start.cr0: '0x10000000000000000' does not fit in 64 unsigned bits",
    "start-null-value.json": "start.cr0: expected an integer or hex string, got null",
    "start-arabic-digits.json": f"start.cr3: not a number: '\u0664\u0660\u0669\u0666' {NUMBER}",
    # the events list
    "events-object.json": "events: expected a list of events",
    "events-string.json": "events: expected a list of events",
    "event-string.json": "events[0]: expected an object with an \"op\" field",
    "event-null.json": "events[0]: expected an object with an \"op\" field",
    # op
    "op-list.json": "events[0].op: unknown op ['mov_cr0'] " + OPS_LIST,
    "op-object.json": "events[0].op: unknown op {'mov_cr0': 1} " + OPS_LIST,
    "op-missing.json": "events[0].op: missing: every event needs an op " + OPS_LIST,
    "op-null.json": "events[0].op: unknown op null " + OPS_LIST,
    "op-number.json": "events[0].op: unknown op 5 " + OPS_LIST,
    "op-unknown.json": "events[0].op: unknown op 'mov_cr9' " + OPS_LIST,
    "op-newline.json": "events[0].op: unknown op 'mov\\ncr0' " + OPS_LIST,
    "op-nested-in-shadow.json": "events[0].op: vmexit is L1 running L2: it needs \"mode\": \"nested-tdp\"",
    # numbers
    "value-underscore.json": f"events[0].value: not a number: '0x1_000' {NUMBER}",
    "value-decimal-underscore.json": f"events[0].value: not a number: '4_096' {NUMBER}",
    "value-leading-space.json": f"events[0].value: not a number: ' 0x1000' {NUMBER}",
    "value-trailing-space.json": f"events[0].value: not a number: '0x1000 ' {NUMBER}",
    "value-arabic-indic-digits.json": f"events[0].value: not a number: '\u0664\u0660\u0669\u0666' {NUMBER}",
    "value-fullwidth-digits.json": f"events[0].value: not a number: '\uff14\uff10\uff19\uff16' {NUMBER}",
    "value-fullwidth-in-hex.json": f"events[0].value: not a number: '0x\uff11\uff10\uff10\uff10' {NUMBER}",
    "value-plus-sign.json": f"events[0].value: not a number: '+0x1000' {NUMBER}",
    "value-minus-sign.json": f"events[0].value: not a number: '-0x1000' {NUMBER}",
    "value-empty-string.json": f"events[0].value: not a number: '' {NUMBER}",
    "value-bare-0x.json": f"events[0].value: not a number: '0x' {NUMBER}",
    "value-hex-garbage.json": f"events[0].value: not a number: '0xzz' {NUMBER}",
    "value-decimal-5000-digits.json": "events[0].value: a number of 5000 digits does not fit in 64 unsigned",
    "value-hex-too-big.json": "events[0].value: '0x10000000000000000' does not fit in 64 unsigned bits",
    "value-negative-int.json": "events[0].value: -1 does not fit in 64 unsigned bits",
    "value-int-too-big.json": "events[0].value: 18446744073709551616 does not fit in 64 unsigned bits",
    "value-float.json": "events[0].value: expected an integer or hex string, got 4096.0",
    "value-exponent.json": "events[0].value: expected an integer or hex string, got 1000.0",
    "value-bool.json": "events[0].value: expected an integer or hex string, got true",
    "value-null.json": "events[0].value: expected an integer or hex string, got null",
    "value-list.json": "events[0].value: expected an integer or hex string, got [4096]",
    "value-object.json": "events[0].value: expected an integer or hex string, got {'v': 1}",
    "addr-newline-digits.json": f"events[0].addr: not a number: '0x1000\\n' {NUMBER}",
    "vpid-too-big.json": "events[0].vpid: 65536 does not fit in 16 unsigned bits",
    "invpcid-type-string.json": f"events[0].type: not a number: 'one' {NUMBER}",
    # the other event fields
    "vcpu-negative.json": "events[0].vcpu: vCPU -1 does not exist (the scenario has 1)",
    "vcpu-too-big.json": "events[0].vcpu: vCPU 1 does not exist (the scenario has 1)",
    "vcpu-string.json": "events[0].vcpu: expected a vCPU index (an integer), got '0'",
    "vcpu-bool.json": "events[0].vcpu: expected a vCPU index (an integer), got false",
    "vcpu-float.json": "events[0].vcpu: expected a vCPU index (an integer), got 0.0",
    "vcpu-huge.json": "events[0].vcpu: vCPU 1000000000000000000000000000000 does not exist",
    "set-string.json": "events[0].set: expected a list of CR0 bit names",
    "set-number.json": "events[0].set[0]: unknown CR0 bit 65536 (expected one of: PE MP",
    "set-unknown-bit.json": "events[0].set[1]: unknown CR0 bit 'XX'",
    "set-and-value.json": "events[0]: mov_cr0 needs either \"value\" or \"set\"/\"clear\"",
    "neither-value-nor-set.json": "events[0]: mov_cr0 needs either \"value\" or \"set\"/\"clear\"",
    "host-string.json": "events[0].host: expected true or false",
    "access-write-number.json": "events[0].write: expected true or false",
    "set-sregs-empty.json": "events[0]: set_sregs needs at least one of",
    "unknown-event-field.json": "events[0].adr: unknown field 'adr' (expected one of: op, vcpu,",
    "missing-field.json": "events[0].cr3: missing: write_pte needs 'cr3'",
}
CLI_ONLY = {"era-unknown.json",       # valid documents: the command line resolves the era
            "start-invalid-state.json"}  # and the VM refuses the start state


def test_every_corpus_file_has_its_expected_message():
    files = {p.name for p in CORPUS.iterdir() if p.is_file()}
    assert files == set(FILE_CASES)


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_bad_file(name):
    path = CORPUS / name
    status, out, err = in_process("run", path)
    answered(f"run {name}", status, out, err, f"{path}: {FILE_CASES[name]}")
    if name not in CLI_ONLY:             # the API: the same message, as ScenarioError
        with pytest.raises(ScenarioError) as raised:
            load_scenario(path)
        assert err == f"{path}: {raised.value}\n"


@pytest.mark.parametrize("name", ["op-list.json", "dup-mode.json", "not-utf8.json",
                                  "value-arabic-indic-digits.json"])
def test_bad_file_to_compare(name):
    path = CORPUS / name
    status, out, err = in_process("compare", path, "--era", "v6.18", "--era", "v5.17")
    answered(f"compare {name}", status, out, err, f"{path}: {FILE_CASES[name]}")


# Generated: too big for the repository, or not files at all.
def _deep(n, opener, closer):
    return '{"events": [{"op": "mov_cr3", "value": ' + opener * n + "0" + closer * n + "}]}"


def _events(n):
    return '{"events": [' + ",".join(['{"op":"smi"}'] * n) + "]}"


GENERATED = {
    "nested 100,000 deep (arrays)": (lambda: _deep(100_000, "[", "]"),
                                     f"$: arrays and objects nested more than "
                                     f"{scenario_module.MAX_JSON_DEPTH} deep at line 1 column "),
    "nested 100,000 deep (objects)": (lambda: _deep(100_000, '{"a":', "}"),
                                      f"$: arrays and objects nested more than "
                                      f"{scenario_module.MAX_JSON_DEPTH} deep at line 1 column "),
    "nested 500 deep (parses)": (lambda: _deep(500, "[", "]"),
                                 "events[0].value: expected an integer or hex string, got [[[[...]]]]"),
    "one event past the limit": (lambda: _events(MAX_EVENTS + 1),
                                 f"events: {MAX_EVENTS + 1:,} events; a scenario has at most "
                                 f"{MAX_EVENTS:,}"),
    "1,000,000 events": (lambda: _events(1_000_000),
                         f"events: 1,000,000 events; a scenario has at most {MAX_EVENTS:,}"),
}


@pytest.mark.parametrize("case", GENERATED)
def test_generated_file(tmp_path, case):
    make, expected = GENERATED[case]
    path = tmp_path / "big.json"
    path.write_text(make())
    status, out, err = in_process("run", path)
    answered(case, status, out, err, f"{path}: {expected}")


def test_a_100_gib_sparse_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(100 << 30)
    status, out, err = in_process("run", path)
    answered("a 100 GiB file", status, out, err,
             f"{path}: $: the file has {100 << 30:,} bytes; at most "
             f"{scenario_module.MAX_FILE_BYTES:,} are read")


def test_a_file_name_with_a_newline_stays_one_line(tmp_path):
    path = tmp_path / "two\nlines.json"
    path.write_text("{")
    status, out, err = in_process("run", path)
    answered("a file name with a newline", status, out, err,
             f"{tmp_path}/two\\nlines.json: $: not valid JSON")


def test_missing_file_and_directory(tmp_path):
    status, out, err = in_process("run", tmp_path / "absent.json")
    answered("a missing file", status, out, err,
             f"{tmp_path}/absent.json: $: cannot read the file: No such file or directory")
    status, out, err = in_process("run", tmp_path)
    answered("a directory", status, out, err, f"{tmp_path}: $: not a regular file (a directory)")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "scenario.fifo"
    os.mkfifo(fifo)                       # nobody ever writes to it: a read would block
    answered("run on a FIFO", *subprocess_cli("run", fifo), f"{fifo}: $: not a regular file (a FIFO)")
    with pytest.raises(ScenarioError, match=r"^\$: not a regular file \(a FIFO\)$"):
        load_scenario(fifo)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused_unread(tmp_path, device):
    link = tmp_path / "scenario.json"
    link.symlink_to(device)
    answered(f"run on {device}", *subprocess_cli("run", device),
             f"{device}: $: not a regular file (a character device)")
    answered(f"run on a link to {device}", *in_process("run", link),
             f"{link}: $: not a regular file (a character device)")


def test_run_json_into_a_closed_pipe_ends_quietly(tmp_path):
    """`run ... --json | head -c 100`: the reader goes away; no traceback, no
    message, the status a Unix filter has when SIGPIPE ends it (128 + 13)."""
    big = tmp_path / "big.json"          # its output is far more than a pipe holds
    big.write_text(json.dumps({"start": "long-mode", "events": [
        {"op": "mov_cr0", "clear" if i % 2 else "set": ["WP"]} for i in range(2000)]}))
    for argv in (["run", big, "--json"], ["run", big, "--trace"]):
        p = subprocess.Popen([sys.executable, "-m", "mmu_model", *map(str, argv)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        head = p.stdout.read(100)
        p.stdout.close()
        err = p.stderr.read()
        p.stderr.close()
        assert p.wait(timeout=120) == 141 and err == b"" and len(head) == 100, (argv, err)


# ---------------------------------------------------------------------------
# Arguments: one line, not argparse's usage block; limits before the work
LIMITS = {"check": search.MAX_EXAMPLES, "ablate": ablate.MAX_EXAMPLES}
ARG_CASES = [
    ([], "python -m mmu_model: the following arguments are required: command"),
    (["frob"], "python -m mmu_model: command: invalid choice 'frob' (choose from run, compare,"),
    (["run"], "python -m mmu_model run: the following arguments are required: scenario"),
    (["run", SCENARIO, "--mode", "x"],
     "python -m mmu_model run: --mode: invalid choice 'x' (choose from shadow, tdp, tdp-legacy, "
     "nested-tdp)"),
    (["run", SCENARIO, "--vendor", "arm"],
     "python -m mmu_model run: --vendor: invalid choice 'arm' (choose from vmx, svm)"),
    (["run", SCENARIO, "--era", "v9.99"], "--era: unknown era 'v9.99' (expected one of: v5.15,"),
    (["run", SCENARIO, "--era"], "python -m mmu_model run: --era: expected one argument"),
    (["run", SCENARIO, "--bogus"], "python -m mmu_model: unrecognized arguments: --bogus"),
    (["run", SCENARIO, "a\nb"], "python -m mmu_model: unrecognized arguments: a\\nb"),
    (["compare", SCENARIO], "python -m mmu_model compare: the following arguments are required: --era"),
    (["compare", SCENARIO, "--era", "v9.99"], "--era: unknown era 'v9.99'"),
    (["compare", SCENARIO, "--era", "v6.18", "--mode", "ept"],
     "python -m mmu_model compare: --mode: invalid choice 'ept'"),
    (["check", "--examples", str(10 ** 30)],
     f"--examples: expected a number from 1 to {LIMITS['check']:,}, got {10 ** 30}"),
    (["check", "--examples", "10**30"],
     "python -m mmu_model check: --examples: invalid int value: '10**30'"),
    (["check", "--examples", str(LIMITS["check"] + 1)],
     f"--examples: expected a number from 1 to {LIMITS['check']:,}, got {LIMITS['check'] + 1}"),
    (["check", "--examples", "0"], f"--examples: expected a number from 1 to {LIMITS['check']:,}, got 0"),
    (["check", "--examples", "-5"], "--examples: expected a number from 1 to"),
    (["check", "--examples", "1e3"], "python -m mmu_model check: --examples: invalid int value: '1e3'"),
    (["check", "--examples", "9" * 5000], "python -m mmu_model check: --examples: invalid int value: '999"),
    (["check", "--seed", "abc"], "python -m mmu_model check: --seed: invalid int value: 'abc'"),
    (["check", "--era", "v9.99"], "--era: unknown era 'v9.99'"),
    (["check", "--baseline", "v9.99"], "--baseline: unknown era 'v9.99'"),
    (["check", "--mode", "ept"], "python -m mmu_model check: --mode: invalid choice 'ept'"),
    (["check", "--vendor", "arm"], "python -m mmu_model check: --vendor: invalid choice 'arm'"),
    (["ablate", "--era", "v5.15"], "--era: no decision list for 'v5.15' (have: "),
    (["ablate", "--era", "v9.99"], "--era: unknown era 'v9.99'"),
    (["ablate", "--examples", str(10 ** 30)],
     f"--examples: expected a number from 1 to {LIMITS['ablate']:,}, got {10 ** 30}"),
    (["ablate", "--examples", "0"], "--examples: expected a number from 1 to"),
    (["ablate", "--mode", "ept"], "python -m mmu_model ablate: --mode: invalid choice 'ept'"),
    (["review", "--era", "v6.18~no-pcide-unload", "--examples", str(10 ** 30)],
     f"--examples: expected a number from 1 to {search.MAX_EXAMPLES // 6:,} (6 searches of at most "
     f"{search.MAX_EXAMPLES:,} programs in all), got {10 ** 30}"),
    (["review", "--era", "v6.18~no-pcide-unload", "--mode", "shadow", "--examples",
      str(search.MAX_EXAMPLES)],
     f"--examples: expected a number from 1 to {search.MAX_EXAMPLES // 2:,} (2 searches"),
    (["review", "--era", "v6.18~no-pcide-unload", "--examples", "0"], "--examples: expected a number"),
    (["review", "--era", "v9.99"], "--era: unknown era 'v9.99'"),
    (["review", "--era", "v6.18"], "--era: v6.18 is not a variant"),
    (["review", "--era", "v6.18~no-pcide-unload", "--mode", "ept"],
     "python -m mmu_model review: --mode: invalid choice 'ept'"),
    (["review"], "python -m mmu_model review: the following arguments are required: --era"),
    (["quiz", "-n", str(10 ** 9)],
     f"-n: expected a number of questions from 1 to {quiz.MAX_QUESTIONS:,}, got {10 ** 9}"),
    (["quiz", "-n", str(quiz.MAX_QUESTIONS + 1)], "-n: expected a number of questions from 1 to"),
    (["quiz", "-n", "0"], "-n: expected a number of questions from 1 to"),
    (["quiz", "-n", "abc"], "python -m mmu_model quiz: -n/--questions: invalid int value: 'abc'"),
    (["quiz", "-s", "abc"], "python -m mmu_model quiz: -s/--seed: invalid int value: 'abc'"),
    (["quiz", "-s"], "python -m mmu_model quiz: -s/--seed: expected one argument"),
    (["quiz", "--bogus"], "python -m mmu_model quiz: unrecognized arguments: --bogus"),
    (["eras", "--bogus"], "python -m mmu_model: unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv,expected", ARG_CASES, ids=[" ".join(a)[:60] for a, _e in ARG_CASES])
def test_bad_argument(argv, expected):
    answered(" ".join(argv)[:200] or "no arguments", *in_process(*argv), expected)


@pytest.mark.parametrize("argv,expected", ARG_CASES[:4], ids=["none", "frob", "run", "run --mode x"])
def test_argument_errors_are_one_line_from_the_shell_too(argv, expected):
    """Through __main__, as a user runs it: the same single line."""
    answered("shell: " + (" ".join(argv[:1] + argv[2:]) or "no arguments"), *subprocess_cli(*argv),
             expected)


def test_compare_refuses_more_steps_than_a_run_may_take(tmp_path):
    path = tmp_path / "many.json"
    n = MAX_EVENTS // 2 + 1
    path.write_text(_events(n))
    status, out, err = in_process("compare", path, "--era", "v6.18", "--era", "v5.17")
    answered("compare of 2 x (MAX_EVENTS/2 + 1) steps", status, out, err,
             f"{path}: events: {n:,} events x 2 runs is {2 * n:,} steps; compare runs at most "
             f"{MAX_EVENTS:,}")


# ---------------------------------------------------------------------------
# --variants: user code that fails, at load time or while the model runs
VARIANT_CASES = [
    ("zero-division.py", ["run", SCENARIO],
     "the file raised ZeroDivisionError: division by zero (line 2, in <module>)"),
    ("raises-on-import.py", ["run", SCENARIO],
     "the file raised ValueError: not a mirrored function"),
    ("syntax-error.txt", ["run", SCENARIO], "the file raised SyntaxError: invalid syntax"),
    ("override-raises.py", ["run", SCENARIO, "--era", "v6.18~raises"],
     "the variant raised RuntimeError: the reviewer's sketch is unfinished "
     "(line 6, in kvm_mmu_reset_context) at events[0]"),
    ("override-raises.py", ["run", SCENARIO, "--era", "v6.18~raises", "--json"],
     "the variant raised RuntimeError"),
    ("override-raises.py", ["compare", SCENARIO, "--era", "v6.18", "--era", "v6.18~raises"],
     "the variant raised RuntimeError: the reviewer's sketch is unfinished "
     "(line 6, in kvm_mmu_reset_context) at events[0]"),
    ("override-raises.py", ["check", "--era", "v6.18~raises", "--examples", "3"],
     "the variant raised RuntimeError: the reviewer's sketch is unfinished "
     "(line 6, in kvm_mmu_reset_context)"),
    ("override-raises.py", ["review", "--era", "v6.18~raises", "--examples", "3"],
     "the variant raised RuntimeError: the reviewer's sketch is unfinished "
     "(line 6, in kvm_mmu_reset_context)"),
    ("override-recurses.py", ["run", SCENARIO, "--era", "v6.18~recurses"],
     "the variant raised RecursionError: maximum recursion depth exceeded"),
]


@pytest.mark.parametrize("name,argv,expected", VARIANT_CASES,
                         ids=[f"{n} {a[0]}" for n, a, _e in VARIANT_CASES])
def test_variants_file_that_fails(name, argv, expected):
    path = VARIANTS / name
    answered(f"--variants {name} ({' '.join(argv[:1] + argv[2:])})",
             *in_process(*argv, "--variants", path), f"--variants {path}: {expected}")


# sys.exit and KeyboardInterrupt would end this process: a subprocess each.
EXIT_CASES = [
    ("sys-exit.py", ["run", SCENARIO], "the file called sys.exit(3) (line 4, in <module>)"),
    ("sys-exit-message.py", ["run", SCENARIO], "the file called sys.exit('goodbye')"),
    ("keyboard-interrupt.py", ["run", SCENARIO], "the file raised KeyboardInterrupt"),
    ("override-exits.py", ["run", SCENARIO, "--era", "v6.18~exits", "--json"],
     "the variant called sys.exit(0) (line 8, in kvm_mmu_reset_context) at events[0]"),
]


@pytest.mark.parametrize("name,argv,expected", EXIT_CASES, ids=[n for n, _a, _e in EXIT_CASES])
def test_variants_file_that_exits(name, argv, expected):
    path = VARIANTS / name
    answered(f"--variants {name}", *subprocess_cli(*argv, "--variants", path),
             f"--variants {path}: {expected}")


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "missing"])
def test_variants_path_that_is_not_a_file(tmp_path, target):
    path = tmp_path / "v.fifo" if target == "fifo" else Path(target) if target != "missing" \
        else tmp_path / "absent.py"
    if target == "fifo":
        os.mkfifo(path)
    expected = {"fifo": "not a regular file (a FIFO)",
                "/dev/zero": "not a regular file (a character device)",
                "missing": "cannot read the file: No such file or directory"}[target]
    answered(f"--variants on {target}", *subprocess_cli("run", SCENARIO, "--variants", path),
             f"--variants {path}: {expected}")


# ---------------------------------------------------------------------------
# The Python API: ScenarioError (exported from mmu_model), the same messages
def _sim(**kw):
    return lambda: Simulation(**{"era": "v6.18", **kw})


def _step(ev):
    return lambda: Simulation("v6.18", start="long-mode").step(ev)


def _apply(ev):
    return lambda: Simulation("v6.18", start="long-mode").apply(ev)


API_CASES = {
    'Simulation(mode="ept")': (_sim(mode="ept"),
                               "mode: unknown mode 'ept' (expected one of: shadow, tdp, tdp-legacy, "
                               "nested-tdp)"),
    "Simulation(mode=['tdp'])": (_sim(mode=["tdp"]), "mode: unknown mode ['tdp']"),
    "Simulation(mode=None)": (_sim(mode=None), "mode: unknown mode None"),
    'Simulation(vendor="arm")': (_sim(vendor="arm"),
                                 "vendor: unknown vendor 'arm' (expected one of: vmx, svm)"),
    "Simulation(vendor={})": (_sim(vendor={}), "vendor: unknown vendor {}"),
    "Simulation(era=None)": (_sim(era=None), "era: expected an era name or an Era, got None"),
    "Simulation(era=5)": (_sim(era=5), "era: expected an era name or an Era, got 5"),
    "Simulation(era=['v6.18'])": (_sim(era=["v6.18"]), "era: expected an era name or an Era"),
    'Simulation(era="v9.99")': (_sim(era="v9.99"), "era: unknown era 'v9.99' (expected one of:"),
    "Simulation(vcpus=0)": (_sim(vcpus=0), "vcpus: expected an integer from 1 to 64, got 0"),
    "Simulation(vcpus=-1)": (_sim(vcpus=-1), "vcpus: expected an integer from 1 to 64, got -1"),
    "Simulation(vcpus=10000)": (_sim(vcpus=10000), "vcpus: expected an integer from 1 to 64, got 10000"),
    "Simulation(vcpus=True)": (_sim(vcpus=True), "vcpus: expected an integer from 1 to 64, got True"),
    "Simulation(vcpus='2')": (_sim(vcpus="2"), "vcpus: expected an integer from 1 to 64, got '2'"),
    "Simulation(vcpus=1.5)": (_sim(vcpus=1.5), "vcpus: expected an integer from 1 to 64, got 1.5"),
    "start with an unknown key": (_sim(start={"cr0": 0x80050033, "rip": 0xFFF0}),
                                  "start.rip: unknown field 'rip' (expected one of: cr0,"),
    "start=5": (_sim(start=5), "start: expected a preset name or an object"),
    "start=[]": (_sim(start=[]), "start: expected a preset name or an object"),
    'start="longmode"': (_sim(start="longmode"), "start: unknown preset 'longmode'"),
    "start with 0x1_000": (_sim(start={"cr3": "0x1_000"}), f"start.cr3: not a number: '0x1_000' {NUMBER}"),
    "start with None": (_sim(start={"cr0": None}), "start.cr0: expected an integer or hex string, got null"),
    "start not a valid state": (_sim(start={"cr0": "0x80000001", "efer": "0x500"}),
                                "start: not a valid starting state: EFER.LME with CR0.PG"),
    "step(vcpu=-1)": (_step({"op": "smi", "vcpu": -1}),
                      "vcpu: vCPU -1 does not exist (the simulation has 1)"),
    "step(vcpu=1)": (_step({"op": "smi", "vcpu": 1}), "vcpu: vCPU 1 does not exist (the simulation has 1)"),
    "step(vcpu=True)": (_step({"op": "smi", "vcpu": True}), "vcpu: vCPU True does not exist"),
    "step(vcpu='0')": (_step({"op": "smi", "vcpu": "0"}), "vcpu: vCPU '0' does not exist"),
    "apply(op=list)": (_apply({"op": ["mov_cr0"]}), "event.op: unknown op ['mov_cr0'] " + OPS_LIST),
    "apply(op=dict)": (_apply({"op": {"mov_cr0": 1}}), "event.op: unknown op {'mov_cr0': 1} " + OPS_LIST),
    "apply('smi')": (_apply("smi"), "event: expected an object with an \"op\" field"),
    "apply(vcpu=-1)": (_apply({"op": "smi", "vcpu": -1}), "event.vcpu: vCPU -1 does not exist"),
    "apply(value=Arabic digits)": (_apply({"op": "mov_cr3", "value": "\u0664\u0660\u0669\u0666"}),
                                   "event.value: not a number: '\u0664\u0660\u0669\u0666'"),
    "apply(value=' 0x1000')": (_apply({"op": "mov_cr3", "value": " 0x1000"}),
                               "event.value: not a number: ' 0x1000'"),
    "parse_scenario(op=list)": (lambda: parse_scenario({"events": [{"op": ["smi"]}]}),
                                "events[0].op: unknown op ['smi'] " + OPS_LIST),
    "parse_scenario(op=dict)": (lambda: parse_scenario({"events": [{"op": {}}]}),
                                "events[0].op: unknown op {} " + OPS_LIST),
    "parse_scenario([])": (lambda: parse_scenario([]), "$: a scenario is a JSON object"),
    "parse_scenario(int key)": (lambda: parse_scenario({1: 2}), "1: unknown field 1 (expected one of:"),
    "parse_scenario(too many events)": (
        lambda: parse_scenario({"events": [{"op": "smi"}] * (MAX_EVENTS + 1)}),
        f"events: {MAX_EVENTS + 1:,} events; a scenario has at most"),
    "load_scenario(NUL in name)": (lambda: load_scenario("a\0b.json"),
                                   "$: cannot read the file: its name contains a NUL byte"),
    'find_violation(mode="ept")': (lambda: search.find_violation("v6.18", "ept"),
                                   "mode: unknown mode 'ept' (expected one of:"),
    'find_violation(vendor="arm")': (lambda: search.find_violation("v6.18", "tdp", "arm"),
                                     "vendor: unknown vendor 'arm'"),
    'find_violation(era="v9.99")': (lambda: search.find_violation("v9.99", "tdp"),
                                    "era: unknown era 'v9.99'"),
    'find_violation(baseline="v9.99")': (lambda: search.find_violation("v6.18", "tdp", baseline="v9.99"),
                                         "baseline: unknown era 'v9.99'"),
    "find_violation(examples=10**30)": (lambda: search.find_violation("v6.18", "tdp", examples=10 ** 30),
                                        f"examples: expected a number of programs from 1 to "
                                        f"{search.MAX_EXAMPLES:,}, got {10 ** 30}"),
    "find_violation(examples=0)": (lambda: search.find_violation("v6.18", "tdp", examples=0),
                                   "examples: expected a number of programs from 1 to"),
    "ablation_table(examples=10**30)": (lambda: ablate.ablation_table("v6.18", examples=10 ** 30),
                                        f"examples: expected a number of programs from 1 to "
                                        f"{ablate.MAX_EXAMPLES:,}, got {10 ** 30}"),
    'ablation_table(modes=("ept",))': (lambda: ablate.ablation_table("v6.18", ("ept",)),
                                       "mode: unknown mode 'ept'"),
    'ablation_table(modes="shadow")': (lambda: ablate.ablation_table("v6.18", "shadow"),
                                       "modes: expected a list of modes, got 'shadow'"),
    "quiz.main(-n 10**9)": (lambda: quiz.main(["-n", str(10 ** 9)], out=io.StringIO()),
                            f"-n: expected a number of questions from 1 to {quiz.MAX_QUESTIONS:,}"),
}


@pytest.mark.parametrize("case", API_CASES)
def test_api_raises_scenario_error(case):
    call, expected = API_CASES[case]
    raises(case, call, expected)


def test_scenario_error_is_exported_and_documented():
    assert mmu_model.ScenarioError is ScenarioError and "ScenarioError" in mmu_model.__all__
    assert issubclass(ScenarioError, ValueError)
    contract = (ROOT / "docs" / "contract.md").read_text()
    assert "ScenarioError" in contract


def test_a_refused_event_changes_nothing():
    sim = Simulation("v6.18", "shadow", start="long-mode-pcid")
    sim.apply({"op": "mov_cr3", "value": "0x2001"})
    before = (sim.steps_run, len(sim.outcomes), sim.kvm.vcpus[0].regs(), sim.totals())
    for bad in ({"op": "smi", "vcpu": -1}, {"op": ["smi"]}, {"op": "mov_cr3", "value": "0x1_000"}):
        with pytest.raises(ScenarioError):
            sim.apply(bad)
    with pytest.raises(ScenarioError):
        sim.step({"op": "smi", "vcpu": -1})
    assert (sim.steps_run, len(sim.outcomes), sim.kvm.vcpus[0].regs(), sim.totals()) == before


def test_start_dicts_read_as_in_a_scenario_file():
    """A partial start takes the reset values for what it omits, and hex
    strings are read, as in a scenario file (docs/contract.md)."""
    reset = Simulation("v6.18", start="reset").kvm.vcpus[0].regs()
    partial = Simulation("v6.18", start={"cr0": 0x11}).kvm.vcpus[0].regs()
    assert partial == {**reset, "cr0": 0x11}
    as_hex = Simulation("v6.18", start={"cr0": "0x80050033", "cr3": "0x1000", "cr4": "0x6a0",
                                        "efer": "0xd01"}).kvm.vcpus[0].regs()
    assert as_hex == Simulation("v6.18", start="long-mode").kvm.vcpus[0].regs()


def test_the_limits_are_stated_in_the_readme():
    """The README's command-line section states every limit the code checks,
    on the line that names its constant."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The command line"):]
    section = section[:section.index("\n## ", 3)]
    for name, figure in (("MAX_EVENTS", f"{MAX_EVENTS:,}"),
                         ("MAX_VCPUS", f"{scenario_module.MAX_VCPUS:,}"),
                         ("MAX_FILE_BYTES", f"{scenario_module.MAX_FILE_BYTES >> 20} MiB"),
                         ("search.MAX_EXAMPLES", f"{search.MAX_EXAMPLES:,}"),
                         ("ablate.MAX_EXAMPLES", f"{ablate.MAX_EXAMPLES:,}"),
                         ("quiz.MAX_QUESTIONS", f"{quiz.MAX_QUESTIONS:,}")):
        lines = [line for line in section.splitlines() if f"`{name}`" in line]
        assert lines and re.search(rf"(?<![\d,]){re.escape(figure)}(?![\d,])", lines[0]), name
