"""Plot functions draw on a given Agg axes and return their artists."""
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from conftest import SCENARIOS  # noqa: E402

from mmu_model import load_scenario, run_scenario  # noqa: E402
from mmu_model.classroom.plots import (  # noqa: E402
    counts_table,
    plot_counts,
    plot_timeline,
    root_lifetimes,
    vcpu_table,
    workload,
)


def steps(name, era="v6.18", mode="shadow"):
    return run_scenario(load_scenario(SCENARIOS / f"{name}.json"), era, mode)["steps"]


def test_timeline_returns_artists():
    """A bar per root interval and a marker per flush, on the given axes."""
    fig, ax = plt.subplots()
    artists = plot_timeline(ax, steps("pcid-lru"))
    assert artists
    for a in artists:                     # Line2D, or a BarContainer of patches on ax
        assert all(x.axes is ax for x in getattr(a, "patches", [a]))
    assert len(ax.patches) == sum(len(v) for v in root_lifetimes(steps("pcid-lru")).values())
    plt.close(fig)


def test_lifetimes_follow_the_lru():
    """pcid-lru under v6.18 shadow: roots 2 and 3 are evicted at steps 4 and 5; 2 comes back."""
    spans = root_lifetimes(steps("pcid-lru"))
    assert spans[2] == [(0, 4), (5, None)] and spans[3] == [(1, 5)] and spans[1] == [(-1, None)]


def test_timeline_marks_destroyed_roots():
    """v5.17 TDP WP toggles destroy a root every step: one ✕ per destroyed root."""
    fig, ax = plt.subplots()
    s = steps("cr0-wp-toggle", "v5.17", "tdp")
    plot_timeline(ax, s)
    xs = [line for line in ax.lines if line.get_marker() == "X"]
    assert len(xs) == sum(len(x["destroyed"]) for x in s) > 0
    plt.close(fig)


def test_counts_bars():
    """Grouped bars: one container per series, one bar per row."""
    table = counts_table(load_scenario(SCENARIOS / "cr0-wp-toggle.json"), ["v5.17", "v6.18"],
                         ["shadow", "tdp"])
    fig, ax = plt.subplots()
    artists = plot_counts(ax, table, ylabel="roots built")
    assert len(ax.patches) == 4 and artists
    plt.close(fig)


def test_vcpu_table_is_seeded():
    """The random workload is reproducible, and its table has a row per vCPU count."""
    assert workload(3, 50, 2) == workload(3, 50, 2)
    t = vcpu_table(["v5.17", "v6.18"], [1, 2], n=60)
    assert list(t) == [1, 2] and set(t[1]) == {"v5.17", "v6.18"}
