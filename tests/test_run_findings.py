"""What `run` reports besides the steps: invariant breaks as findings, host
ioctls told apart from VM exits, reproductions that do not say "step None"."""
from __future__ import annotations

import json

from test_cli import cli

BACKPORT = ("--variants", "examples/variant_wp_backport_5_15.py")


def test_run_reports_the_backports_invariant_break_in_the_table_and_json():
    args = ("run", "scenarios/cr0-wp-toggle.json", "--mode", "tdp", *BACKPORT)
    r = cli(*args, "--era", "v5.15+01b31714bd90")
    assert r.returncode == 0, r.stderr
    assert "step 0: INVARIANT vCPU 0: current root 1 was built for another role" in r.stdout
    doc = json.loads(cli(*args, "--era", "v5.15+01b31714bd90", "--json").stdout)
    assert doc["steps"][0]["invariants"] == ["vCPU 0: current root 1 was built for another role"]
    # v5.15 itself resets the MMU on the WP write: no break, nothing reported
    base = cli(*args, "--era", "v5.15")
    assert "INVARIANT" not in base.stdout
    doc = json.loads(cli(*args, "--era", "v5.15", "--json").stdout)
    assert all(s["invariants"] == [] for s in doc["steps"])


def _exit_column(out: str) -> list[str]:
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("#  cpu"))
    col = lines[head].index("exit")
    rows = lines[head + 2:]
    return [ln[col:].split()[0] for ln in rows[:rows.index("")]]


def test_host_ioctls_show_as_ioctl_not_as_exits():
    r = cli("run", "scenarios/efer-lme-host.json")
    assert _exit_column(r.stdout) == ["ioctl", "yes"]       # host WRMSR, then the guest's
    assert set(_exit_column(cli("run", "scenarios/set-sregs.json").stdout)) == {"ioctl"}



def test_a_reproduction_without_an_invalidating_step_does_not_say_step_none():
    from mmu_model.analysis.search import reproduction
    viol = {"vcpu": 0, "addr": "0x400000", "pcid": 0, "stale": "frame 0x1 W", "expected": "not present",
            "source": "shadow", "invalidated_by_step": None}
    text = reproduction("v6.18", "shadow", "vmx", ({}, [], (3, [viol])))["description"]
    assert "None" not in text and "should have invalidated" not in text
    assert text.endswith("its tables say not present.")
    text = reproduction("v6.18", "shadow", "vmx", ({}, [], (3, [{**viol, "invalidated_by_step": 2}])))
    assert "which step 2 should have invalidated; its tables say" in text["description"]
