"""Every library scenario, under both eras and the three modes, matches its
committed golden trace (tests/golden/<scenario>/<era>-<mode>-<vendor>.txt)."""
import pytest
from golden import (
    ABLATION_ERAS,
    ablation_path,
    cases,
    compare_path,
    history_cases,
    path_for,
    render,
    render_ablation,
    render_compare,
)

CASES = list(cases())
HISTORY = list(history_cases())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].name}-{c[1]}-{c[2]}-{c[3]}")
def test_matches_golden(case):
    expected = path_for(*case).read_text()
    assert render(*case) == expected, "behaviour changed: see tests/golden.py before regenerating"


@pytest.mark.parametrize("case", HISTORY, ids=lambda c: c[0].name)
def test_history_compare_matches_golden(case):
    """Every preset from history, compared across all eras and variants."""
    sc, runs = case
    assert render_compare(sc, runs) == compare_path(sc).read_text()


@pytest.mark.parametrize("era", ABLATION_ERAS)
def test_ablation_table_matches_golden(era):
    """Which unloads and flushes are needed, per mode, with a reproduction and
    the reason for each needed one (slow: about half a minute per era)."""
    assert render_ablation(era) == ablation_path(era).read_text()


def test_golden_set_is_complete():
    """No stale golden files: each on disk belongs to a current case."""
    from golden import GOLDEN
    wanted = ({path_for(*c) for c in CASES} | {compare_path(sc) for sc, _ in HISTORY}
              | {ablation_path(e) for e in ABLATION_ERAS})
    on_disk = set(GOLDEN.glob("*/*.txt"))
    assert on_disk == wanted
