"""Plot functions draw on a given Agg axes and return their artists; the same
charts drawn as SVG where matplotlib cannot be had (the JupyterLite site)."""
import base64
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import SCENARIOS

from mmu_model import load_scenario, run_scenario
from mmu_model.classroom.plots import (
    NOTICE,
    counts_chart,
    counts_svg,
    counts_table,
    plot_counts,
    plot_timeline,
    root_lifetimes,
    timeline_chart,
    timeline_svg,
    vcpu_table,
    workload,
)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def plt():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def steps(name, era="v6.18", mode="shadow"):
    return run_scenario(load_scenario(SCENARIOS / f"{name}.json"), era, mode)["steps"]


def test_timeline_returns_artists(plt):
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


def test_timeline_marks_destroyed_roots(plt):
    """v5.17 TDP WP toggles destroy a root every step: one ✕ per destroyed root."""
    fig, ax = plt.subplots()
    s = steps("cr0-wp-toggle", "v5.17", "tdp")
    plot_timeline(ax, s)
    xs = [line for line in ax.lines if line.get_marker() == "X"]
    assert len(xs) == sum(len(x["destroyed"]) for x in s) > 0
    plt.close(fig)


def test_counts_bars(plt):
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


def svg_tree(svg):
    return ET.fromstring(svg)


def by_class(tree, tag, cls):
    return [e for e in tree.iter(SVG + tag) if e.get("class") == cls]


def test_counts_svg_draws_every_value_as_a_labelled_bar():
    """One bar per (row, series), its height ordered as the values, its value written on it."""
    table = counts_table(load_scenario("cr0-wp-toggle"), ["v5.17", "v6.18"], ["shadow", "tdp"])
    tree = svg_tree(counts_svg(table, ylabel="roots built"))
    bars = by_class(tree, "rect", "bar")
    assert {(b.get("data-row"), b.get("data-series"), int(b.get("data-value"))) for b in bars} == {
        (era, mode, table[era][mode]) for era in table for mode in table[era]}
    assert [t.text for t in by_class(tree, "text", "value")] == [b.get("data-value") for b in bars]
    tallest = max(bars, key=lambda b: int(b.get("data-value")))
    shortest = min(bars, key=lambda b: int(b.get("data-value")))
    assert float(tallest.get("height")) > float(shortest.get("height"))
    assert [t.text for t in by_class(tree, "text", "legend")] == ["shadow", "tdp"]


def test_timeline_svg_has_the_lifetimes_and_destroyed_roots():
    """pcid-lru under v6.18 shadow: a bar per held interval as root_lifetimes()
    finds them; v5.17 TDP WP toggles: one ✕ per destroyed root."""
    s = steps("pcid-lru")
    tree = svg_tree(timeline_svg(s))
    got = sorted((int(r.get("data-root")), int(r.get("data-from")), r.get("data-to"))
                 for r in by_class(tree, "rect", "span"))
    want = sorted((rid, a, "" if b is None else str(b))
                  for rid, v in root_lifetimes(s).items() for a, b in v)
    assert got == want
    assert len(by_class(tree, "path", "flush")) == sum(len(x["tlb_flushes"]) for x in s)
    s = steps("cr0-wp-toggle", "v5.17", "tdp")
    assert len(by_class(svg_tree(timeline_svg(s)), "text", "destroyed")) == \
        sum(len(x["destroyed"]) for x in s) > 0


def test_chart_is_matplotlibs_png_where_matplotlib_loads(plt):
    """Server-side notebooks keep matplotlib: the chart they show is a PNG."""
    table = {"v5.17": {"tdp": 3}, "v6.18": {"tdp": 1}}
    bundle = counts_chart(table, ylabel="roots built")._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "text/html" not in bundle


def test_chart_is_svg_with_a_notice_where_matplotlib_cannot_load(monkeypatch):
    """In the browser's Python a chart is the package's SVG under one line saying
    why, and its text is the chart's data as a table: never a traceback."""
    for mod in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, mod, None)          # import fails as in Pyodide
    table = {1: {"v5.17": 12, "v6.18": 2}, 2: {"v5.17": 20, "v6.18": 4}}
    chart = counts_chart(table, ylabel="roots built", xlabel="vCPUs")
    bundle = chart._repr_mimebundle_()
    assert "image/png" not in bundle
    assert NOTICE in bundle["text/html"] and chart.svg() in bundle["text/html"]
    assert bundle["text/plain"].splitlines() == ["vCPUs  v5.17  v6.18", "    1     12      2",
                                                 "    2     20      4"]
    tl = timeline_chart(steps("pcid-lru"))._repr_mimebundle_()
    assert "class=\"span\"" in tl["text/html"] and "root #2: held over steps 0-4, 5-end" in tl["text/plain"]
