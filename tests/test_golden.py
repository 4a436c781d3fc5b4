"""Every library scenario, under both eras and the three modes, matches its
committed golden trace (tests/golden/<scenario>/<era>-<mode>-<vendor>.txt)."""
import pytest

from golden import cases, path_for, render

CASES = list(cases())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].name}-{c[1]}-{c[2]}-{c[3]}")
def test_matches_golden(case):
    expected = path_for(*case).read_text()
    assert render(*case) == expected, "behaviour changed: see tests/golden.py before regenerating"


def test_golden_set_is_complete():
    """No stale golden files: each on disk belongs to a current case."""
    from golden import GOLDEN
    wanted = {path_for(*c) for c in CASES}
    on_disk = set(GOLDEN.glob("*/*.txt"))
    assert on_disk == wanted
