"""The README's examples do what it says: its Python blocks run as written, and
every shell command block is run, with the exit code and the claim written
next to each command (``# exit 1, prints the shortest reproduction``) checked.

Commands that start a server, or are this test suite itself, are not run; they
are listed in SKIP with the reason.  A command this file does not know how to
run, or a claim it does not know how to check, fails the test: a new README
example comes with its check here.
"""
import json
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT

from mmu_model import all_eras
from mmu_model.eras import ERAS

README = (ROOT / "README.md").read_text()

# Commands not run, and why.
SKIP = {
    "./run lab": "starts JupyterLab, a server that runs until stopped",
    "./run app": "starts Voila, a server that runs until stopped",
    "./run room": "starts Voila for a classroom, a server that runs until stopped",
    "./run test": "is this test suite (what CI runs): running it here would recurse",
    "./run check-all": "the long search (10,000 programs per merged era and mode, tens of "
                       "minutes); tests/test_checker.py runs the quick search it extends",
    "./run bench": "prints benchmark figures; tests/test_bench.py runs its quick version",
    "./run bench-browser": "drives Chromium against a Voila server for minutes",
    "./run handout": "executes every notebook again; tests/test_handout.py covers it",
    "./run lite": "builds (and with --serve serves) the JupyterLite site; tests/test_lite.py "
                  "builds it and runs notebooks in it in Chromium",
    "./run bench-probe": "prints the probe's figures; tests/test_probe.py runs the same checks",
    "sudo .venv/bin/python": "needs root and tracefs; tests/test_probe.py runs traced probes "
                             "with MMU_PROBE_TRACE=1",
}

# Commands run with a smaller size than written, and why: the claim checked next
# to them does not depend on the size, and the written size takes minutes.
SMALLER = {
    "ablate": (["--examples", "20", "--mode", "shadow"],
               "the README's command (1,000 programs per row, four modes) takes about 90 s; "
               "the rows and the closing line it checks look the same at any size"),
}


def shell_commands(text=README):
    """(command, claim) for every line of every ```sh block; a trailing '# ...'
    is the claim, continued on the next lines if they are only comments."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            cmd, _, claim = line.partition("#")
            if cmd.strip():
                out.append([" ".join(cmd.split()), claim.strip()])
            elif claim.strip() and out:
                out[-1][1] += " " + claim.strip()
    return [tuple(c) for c in out]


def skipped(cmd):
    """The SKIP entry for ``./run NAME ...`` (whatever options follow), or None."""
    key = " ".join(cmd.split()[:2])
    return key if key in SKIP else None


def run_cli(args):
    return subprocess.run([sys.executable, "-m", "mmu_model", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def mmu_args(cmd):
    """The arguments after 'python -m mmu_model', or None for other commands."""
    words = shlex.split(cmd)
    for i in range(len(words) - 2):
        if re.search(r"python3?$", words[i]) and words[i + 1:i + 3] == ["-m", "mmu_model"]:
            return words[i + 3:]
    return None


def expected_exit(claim):
    m = re.search(r"\bexit (\d+)", claim)
    return int(m.group(1)) if m else 0


# Claims: a phrase of the comment -> a check of (args, completed process).
def _eras_a_block_each(args, r):
    lines = r.stdout.splitlines()
    heads = [line.split()[0] for line in lines if line.strip() and not line[0].isspace()]
    for era in all_eras():
        assert heads.count(era.name) == 1, f"era {era.name} does not start exactly one block"
    assert max(map(len, lines)) <= 100, max(lines, key=len)


def _a_table(args, r):
    lines = r.stdout.splitlines()
    assert len(lines) >= 3 and any(re.match(r"\s*0\s", line) for line in lines), r.stdout[:500]


def _kernel_calls(args, r):
    assert re.search(r"^\s*kvm_\w+\(\) \{", r.stdout, re.M), "no function_graph trace"


def _contract_json(args, r):
    doc = json.loads(r.stdout)
    assert doc["contract"] == 1 and doc["steps"], list(doc)


def _shortest_reproduction(args, r, tmp_path):
    repro = tmp_path / "repro.json"
    repro.write_text(r.stdout)
    doc = json.loads(run_cli(["run", str(repro), "--json"]).stdout)
    assert any(s["violations"] for s in doc["steps"]), "the printed program shows no violation"
    assert re.search(r"violation found after \d+ programs", r.stderr), r.stderr


def _which_matter(args, r):
    rows = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert rows and all(re.search(r": (NEEDED|no violation in \d+ programs)$", row) for row in rows)
    assert re.search(r"searched up to \d+ random programs per row", r.stdout)
    assert "not a proof" in r.stdout.splitlines()[-1]


def _probe_agrees(args, r):
    assert "agree" in r.stdout, r.stdout[-500:]


def _probe_other_era(args, r):
    assert "disagree" in r.stdout, r.stdout[-500:]


def _probe_refuses(args, r):
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "PCID" in r.stderr, r.stderr


def _add_json(args, r):
    doc = json.loads(run_cli(args + ["--json"]).stdout)
    assert doc["runs"] and doc["steps"], list(doc)


CLAIMS = {
    "the eras, a block each (100 columns)": _eras_a_block_each,
    "a table": _a_table,
    "+ kernel calls": _kernel_calls,
    "contract JSON": _contract_json,
    "prints the shortest reproduction": _shortest_reproduction,
    "which unloads/flushes matter": _which_matter,
    "add --json for the contract's format": _add_json,
    ": every step agrees": _probe_agrees,
    ": not this kernel's era": _probe_other_era,
    ": no PCID here (one line)": _probe_refuses,
}
def known_claims(claim):
    found = [k for k in CLAIMS if k in claim]
    rest = claim
    for k in found:
        rest = rest.replace(k, "")
    rest = re.sub(r"\bexit \d+\b", "", rest).strip(" ,.;")
    assert not rest, f"a claim this test cannot check: {rest!r} (add it to CLAIMS)"
    return found


COMMANDS = shell_commands()


def test_the_readme_has_shell_commands_to_run():
    assert len(COMMANDS) >= 8 and any(mmu_args(c) for c, _ in COMMANDS)


@pytest.mark.parametrize("cmd,claim", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_readme_shell_command(cmd, claim, tmp_path):
    if skipped(cmd):
        pytest.skip(SKIP[skipped(cmd)])
    args = mmu_args(cmd)
    assert args is not None, f"a README command this test does not know how to run: {cmd!r}"
    checks = known_claims(claim)
    extra, _why = SMALLER.get(args[0], ([], ""))
    r = run_cli(args + extra)
    assert r.returncode == expected_exit(claim), (cmd, r.returncode, r.stderr[-2000:])
    for k in checks:
        fn = CLAIMS[k]
        fn(args, r, tmp_path) if fn.__code__.co_argcount == 3 else fn(args, r)


def test_readme_states_the_bad_input_line(tmp_path):
    """The README's example of bad input is the line the CLI prints for it."""
    shown = re.search(r"```\n(bad\.json: events\[3\]\.op: .*?)\n", README).group(1)
    assert shown.endswith("...)")
    bad = {"name": "bad", "start": "long-mode", "events": [
        {"op": "mov_cr3", "value": "0x2000"}, {"op": "smi"}, {"op": "rsm"}, {"op": "mov_cr9"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    r = subprocess.run([sys.executable, "-m", "mmu_model", "run", "bad.json"], cwd=path.parent,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().startswith(shown[:-len("...)")]), r.stderr


def test_skipped_commands_are_the_ones_the_readme_has():
    """SKIP lists only commands of the README, so the list stays honest."""
    for cmd in SKIP:
        assert f"{cmd}" in README, f"SKIP names {cmd!r}, which the README does not mention"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 2
    before = set(ERAS)
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})
        assert "v6.18~no-unload" in ERAS
    finally:
        for name in set(ERAS) - before:
            del ERAS[name]


def test_readme_ablate_default_misses_what_check_finds_at_2000():
    """The README says: at ablate's default size the v6.18 PCIDE 0->1 unload row
    under shadow paging finds nothing, while check finds its removal at 2,000."""
    from mmu_model.analysis.search import find_violation
    from mmu_model.classroom.review import ablation_rows
    assert "--examples 2000" in README and "default 1,000" in README
    row = ablation_rows("v6.18", ["cr4-pcide-on-unload"], modes=("shadow",), examples=1000)
    assert row.data[("cr4-pcide-on-unload", "shadow")] is None
    found, n = find_violation("v6.18~no-pcide-unload", "shadow", "vmx", examples=2000,
                              baseline="v6.18")
    assert found is not None and 1000 < n <= 2000      # none in the first 1,000 (the default)
