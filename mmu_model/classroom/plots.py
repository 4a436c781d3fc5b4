"""Charts for the notebooks: root lifetimes, and counts per era, mode and vCPU count.

Plot functions take a matplotlib ``ax`` and return the artists they drew;
they never create figures or call ``show()``.  The table builders next to
them are pure (they run the model and return dicts) so a notebook cell stays
one line.

A notebook shows a chart by returning ``counts_chart(...)`` or
``timeline_chart(...)``: where matplotlib can be imported (the server-side
notebooks) that is matplotlib's figure as a PNG, drawn by the plot functions
below; where it cannot (the browser's Python in the JupyterLite site: no
Pyodide build of matplotlib is on PyPI or npm) it is the same chart drawn by
this module as SVG, as the lab's panes are, under a one-line notice saying
so.  Both come from the same table, and the text form is that table.
"""
from __future__ import annotations

import base64
import html
import io
import random

from ..harness.sim import Simulation

# Okabe-Ito: distinguishable with every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")
FLUSH_MARKERS = {"current": "v", "guest": "s", "all": "D", "gva": "."}


# ---------------------------------------------------------------------------
# Root lifetimes

def root_lifetimes(outcomes: list[dict]) -> dict:
    """{root id: [(first step held, step it was dropped or None), ...]}.

    A root is held while some vCPU's slot (current or prev) points at it, as
    each outcome reports the acting vCPU's slots; a root dropped and found
    again later (the shadow-page hash) gets a second interval.  Roots a vCPU
    held before its first step start at -1.
    """
    held: dict[int, set] = {}
    open_at: dict[int, int] = {}
    spans: dict[int, list] = {}
    for s in outcomes:
        if s["fault"]:
            continue
        first = s["vcpu"] not in held
        now = {r["id"] for r in [s["root"]] + s["prev_roots"] if r}
        freed = {f["id"] for f in s["freed"]}
        for rid in freed - set(open_at):        # held since before the first step
            open_at[rid] = -1
        held[s["vcpu"]] = now
        after = set().union(*held.values())
        for rid in list(open_at):
            if rid not in after:
                spans.setdefault(rid, []).append((open_at.pop(rid), s["index"]))
        for rid in sorted(after - set(open_at)):
            built = s["root"] and rid == s["root"]["id"] and s["root_source"] != "same"
            open_at[rid] = -1 if first and not built and rid not in spans else s["index"]
    for rid, start in open_at.items():
        spans.setdefault(rid, []).append((start, None))
    return dict(sorted(spans.items()))


def plot_timeline(ax, outcomes: list[dict]) -> list:
    """One horizontal bar per root id, from the step it is first held to the
    step it is freed (open-ended if still held); destroyed roots end in an
    ✕; TLB flushes are markers on a row of their own."""
    artists = []
    spans = root_lifetimes(outcomes)
    end = len(outcomes)
    destroyed = {rid: s["index"] for s in outcomes for rid in s["destroyed"]}
    ids = list(spans)
    for row, rid in enumerate(ids, start=1):
        for start, stop in spans[rid]:
            x0, x1 = start + 0.5, (stop + 0.5 if stop is not None else end + 0.5)
            artists.append(ax.barh(row, x1 - x0, left=x0, height=0.6,
                                   color=PALETTE[0] if stop is None else PALETTE[5],
                                   edgecolor="black", linewidth=0.6,
                                   hatch="" if stop is None else "//"))
        if rid in destroyed:
            artists += ax.plot([destroyed[rid] + 0.5], [row], marker="X", markersize=10,
                               color=PALETTE[3], linestyle="none")
    labels = set()
    for s in outcomes:
        for k, kind in enumerate(s["tlb_flushes"]):
            lab = None if kind in labels else f"flush: {kind}"
            labels.add(kind)
            artists += ax.plot([s["index"] + 0.5 + 0.12 * k], [0],
                               marker=FLUSH_MARKERS.get(kind, "o"), color=PALETTE[1],
                               markeredgecolor="black", linestyle="none", label=lab)
    ax.set_yticks(range(len(ids) + 1), ["TLB flushes"] + [f"root #{i}" for i in ids])
    ax.set_xlim(-0.5, end + 0.5)
    ax.set_ylim(-0.7, len(ids) + 0.7)
    ax.set_xlabel("step (a bar spans the steps a root is held in a slot)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    if labels:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  borderaxespad=0)
    return artists


# ---------------------------------------------------------------------------
# Counts

def plot_counts(ax, table: dict, ylabel: str = "", xlabel: str = "") -> list:
    """Grouped bars: ``table`` maps a row label (x) to {series label: value}.
    Each series has its own colour and hatch, and its values are written on
    the bars."""
    rows = list(table)
    series = list(dict.fromkeys(k for r in rows for k in table[r]))
    width = 0.8 / max(1, len(series))
    artists = []
    for j, name in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        vals = [table[r].get(name, 0) for r in rows]
        bars = ax.bar(xs, vals, width, label=str(name), color=PALETTE[j % len(PALETTE)],
                      hatch=HATCHES[j % len(HATCHES)], edgecolor="black", linewidth=0.6)
        artists.append(bars)
        artists += ax.bar_label(bars, fontsize="x-small")
    ax.set_xticks(range(len(rows)), [str(r) for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    return artists


def counts_table(scenario, eras, modes, metric="roots_allocated", vendor="vmx") -> dict:
    """{era: {mode: totals[metric]}} for one parsed scenario."""
    from ..harness.sim import run_scenario
    return {era: {mode: run_scenario(scenario, era, mode, vendor, trace=False)["totals"][metric]
                  for mode in modes} for era in eras}


def workload(seed: int, n: int, vcpus: int) -> list[dict]:
    """A seeded guest: mostly MOV CR3 among five PCIDs, with CR0.WP pairs
    (kernel writes), CR4.PGE pairs, INVLPG and SMI/RSM pairs, on random vCPUs."""
    rng = random.Random(seed)
    spaces = [0x1000 * (i + 1) | i for i in range(5)]
    events = []
    while len(events) < n:
        v = rng.randrange(vcpus)
        r = rng.random()
        if r < 0.6:
            evs = [{"op": "mov_cr3", "value": rng.choice(spaces) | (rng.random() < 0.5) << 63}]
        elif r < 0.8:
            evs = [{"op": "mov_cr0", "clear": ["WP"]}, {"op": "mov_cr0", "set": ["WP"]}]
        elif r < 0.88:
            evs = [{"op": "mov_cr4", "clear": ["PGE"]}, {"op": "mov_cr4", "set": ["PGE"]}]
        elif r < 0.97:
            evs = [{"op": "invlpg", "addr": 0x1000 * rng.randrange(1, 512)}]
        else:
            evs = [{"op": "smi"}, {"op": "rsm"}]
        events += [{**e, "vcpu": v} for e in evs]
    return events[:n]


def vcpu_table(eras, vcpu_counts, mode="tdp", seed=1, n=200, metric="roots_allocated",
               start="long-mode-pcid", vendor="vmx") -> dict:
    """{vCPU count: {era: totals[metric]}} for the seeded workload."""
    out = {}
    for k in vcpu_counts:
        events = workload(seed, n, k)
        row = {}
        for era in eras:
            sim = Simulation(era, mode, vendor, k, start, trace=False)
            for ev in events:
                sim.apply(ev)
            row[era] = sim.totals()[metric]
        out[k] = row
    return out


# ---------------------------------------------------------------------------
# Charts a notebook cell returns

NOTICE = ("matplotlib cannot be loaded in this browser's Python, so mmu_model drew this chart "
          "as SVG from the same data.")


class Chart:
    """A chart a notebook shows by returning it: matplotlib's PNG where matplotlib
    can be imported, else the package's SVG under ``NOTICE``; its text form is
    the chart's data as a table."""

    def __init__(self, draw, svg, text: str, figsize=(9, 3.5)):
        self._draw, self._svg, self.text, self.figsize = draw, svg, text, figsize

    def figure(self):
        """A matplotlib Figure (not pyplot's, so nothing else shows it)."""
        from matplotlib.figure import Figure
        fig = Figure(figsize=self.figsize)
        self._draw(fig.subplots())
        return fig

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    def svg(self) -> str:
        return self._svg()

    def _repr_mimebundle_(self, include=None, exclude=None):
        try:
            png = self.png()
        except ImportError:
            return {"text/html": f'<div class="mmu-chart"><p class="mmu-chart-notice">'
                                 f'{html.escape(NOTICE, quote=False)}</p>{self.svg()}</div>',
                    "text/plain": self.text}
        return {"image/png": base64.b64encode(png).decode(), "text/plain": self.text}

    def __repr__(self):
        return self.text


def counts_chart(table: dict, ylabel: str = "", xlabel: str = "", figsize=(9, 3.5)) -> Chart:
    """Grouped bars of ``table`` ({row: {series: value}}), as ``plot_counts`` draws them."""
    return Chart(lambda ax: plot_counts(ax, table, ylabel, xlabel),
                 lambda: counts_svg(table, ylabel, xlabel), table_text(table, xlabel), figsize)


def timeline_chart(outcomes: list[dict], figsize=(9, 3.5)) -> Chart:
    """The root lifetimes of ``outcomes``, as ``plot_timeline`` draws them."""
    spans = root_lifetimes(outcomes)
    text = "\n".join(f"root #{rid}: held over steps " + ", ".join(
        f"{'start' if a < 0 else a}-{'end' if b is None else b}" for a, b in v)
        for rid, v in spans.items())
    return Chart(lambda ax: plot_timeline(ax, outcomes), lambda: timeline_svg(outcomes), text,
                 figsize)


def table_text(table: dict, corner: str = "") -> str:
    """``table`` as aligned text: a row per key, a column per series."""
    series = list(dict.fromkeys(k for r in table for k in table[r]))
    rows = [[corner] + [str(s) for s in series]]
    rows += [[str(r)] + [str(table[r].get(s, 0)) for s in series] for r in table]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# SVG hatches matching HATCHES (matplotlib's), one <pattern> each.
_SVG_HATCH = {"//": '<path d="M0,8 L8,0" />', "..": '<circle cx="4" cy="4" r="1.2" />',
              "xx": '<path d="M0,8 L8,0 M0,0 L8,8" />', "\\\\": '<path d="M0,0 L8,8" />',
              "++": '<path d="M4,0 L4,8 M0,4 L8,4" />', "oo": '<circle cx="4" cy="4" r="2.2" fill="none"/>',
              "--": '<path d="M0,4 L8,4" />'}


def _defs(colours_hatches) -> tuple[str, dict]:
    """<defs> with one pattern per (colour, hatch) and a map to fill="url(#…)"."""
    out, fills = [], {}
    for k, (colour, hatch) in enumerate(colours_hatches):
        if not hatch:
            fills[(colour, hatch)] = colour
            continue
        out.append(f'<pattern id="mmu-h{k}" width="8" height="8" patternUnits="userSpaceOnUse">'
                   f'<rect width="8" height="8" fill="{colour}"/>'
                   f'<g stroke="#000" stroke-width="0.8" fill="#000">{_SVG_HATCH[hatch]}</g></pattern>')
        fills[(colour, hatch)] = f"url(#mmu-h{k})"
    return "<defs>" + "".join(out) + "</defs>", fills


def _ticks(top: float, n: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0:
        return [0]
    raw = top / n
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks, t = [], 0.0
    while t < top + step:
        ticks.append(t)
        t += step
    return ticks


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _svg(width, height, body, title) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="mmu-chart-svg" role="img" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'style="font: 11px sans-serif; max-width: 100%; height: auto">'
            f'<title>{html.escape(title)}</title>{body}</svg>')


def counts_svg(table: dict, ylabel: str = "", xlabel: str = "", width=860, height=320) -> str:
    """``plot_counts`` as SVG: grouped bars (class "bar", data-row, data-series and
    data-value on each), the value over each bar, a legend of colour and hatch."""
    rows = list(table)
    series = list(dict.fromkeys(k for r in rows for k in table[r]))
    styles = [(PALETTE[j % len(PALETTE)], HATCHES[j % len(HATCHES)]) for j in range(len(series))]
    defs, fills = _defs(styles)
    left, right, top, bottom = 60, 160, 12, 44
    pw, ph = width - left - right, height - top - bottom
    ticks = _ticks(max([table[r].get(s, 0) for r in rows for s in series] or [0]))
    ymax = ticks[-1] or 1
    y = lambda v: top + ph - ph * v / ymax              # noqa: E731
    out = [defs]
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   f'stroke="#ccc" stroke-width="0.6"/><text x="{left - 4}" y="{y(t) + 4:.1f}" '
                   f'text-anchor="end">{_num(t)}</text>')
    slot = pw / max(1, len(rows))
    bw = 0.8 * slot / max(1, len(series))
    for i, r in enumerate(rows):
        x0 = left + slot * i + 0.1 * slot
        for j, name in enumerate(series):
            v = table[r].get(name, 0)
            x = x0 + bw * j
            out.append(f'<rect class="bar" data-row="{html.escape(str(r))}" '
                       f'data-series="{html.escape(str(name))}" data-value="{_num(v)}" '
                       f'x="{x:.1f}" y="{y(v):.1f}" width="{bw:.1f}" height="{y(0) - y(v):.1f}" '
                       f'fill="{fills[styles[j]]}" stroke="#000" stroke-width="0.6"/>'
                       f'<text class="value" x="{x + bw / 2:.1f}" y="{y(v) - 3:.1f}" '
                       f'text-anchor="middle" font-size="9">{_num(v)}</text>')
        out.append(f'<text x="{left + slot * (i + 0.5):.1f}" y="{top + ph + 15}" '
                   f'text-anchor="middle">{html.escape(str(r))}</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#000"/>'
               f'<line x1="{left}" x2="{left}" y1="{top}" y2="{y(0):.1f}" stroke="#000"/>')
    if xlabel:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                   f'{html.escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" '
                   f'text-anchor="middle">{html.escape(ylabel)}</text>')
    for j, name in enumerate(series):
        ly = top + 4 + 18 * j
        out.append(f'<rect x="{left + pw + 14}" y="{ly}" width="22" height="12" '
                   f'fill="{fills[styles[j]]}" stroke="#000" stroke-width="0.6"/>'
                   f'<text class="legend" x="{left + pw + 42}" y="{ly + 10}">{html.escape(str(name))}</text>')
    title = f"{ylabel or 'counts'} per {xlabel or 'row'}, one bar per " + ", ".join(map(str, series))
    return _svg(width, height, "".join(out), title)


# SVG shapes for FLUSH_MARKERS (matplotlib's v s D .), centred on (0, 0).
_SVG_MARK = {"v": "M-5,-4 L5,-4 L0,5 Z", "s": "M-4,-4 L4,-4 L4,4 L-4,4 Z",
             "D": "M0,-5 L5,0 L0,5 L-5,0 Z", ".": "M-2,-2 L2,-2 L2,2 L-2,2 Z",
             "o": "M-4,0 A4,4 0 1 0 4,0 A4,4 0 1 0 -4,0"}


def timeline_svg(outcomes: list[dict], width=860, row_h=26) -> str:
    """``plot_timeline`` as SVG: a bar (class "span") per interval a root is held,
    hatched once it is dropped, an ✕ (class "destroyed") where a root is destroyed,
    and the TLB flushes (class "flush") on a row of their own."""
    spans = root_lifetimes(outcomes)
    end = len(outcomes)
    destroyed = {rid: s["index"] for s in outcomes for rid in s["destroyed"]}
    ids = list(spans)
    left, right, top = 90, 130, 8
    height = top + row_h * (len(ids) + 1) + 40
    pw = width - left - right
    x = lambda v: left + pw * (v + 0.5) / (end + 1)      # noqa: E731  as xlim(-0.5, end + 0.5)
    defs, fills = _defs([(PALETTE[0], ""), (PALETTE[5], "//")])
    out = [defs]
    for row, label in enumerate(["TLB flushes"] + [f"root #{i}" for i in ids]):
        cy = top + row_h * row + row_h / 2
        out.append(f'<text x="{left - 6}" y="{cy + 4:.1f}" text-anchor="end">{label}</text>')
    for step in range(end + 1):
        out.append(f'<line x1="{x(step):.1f}" x2="{x(step):.1f}" y1="{top}" '
                   f'y2="{top + row_h * (len(ids) + 1)}" stroke="#ddd" stroke-width="0.6"/>'
                   f'<text x="{x(step):.1f}" y="{top + row_h * (len(ids) + 1) + 14}" '
                   f'text-anchor="middle">{step}</text>')
    for row, rid in enumerate(ids, start=1):
        cy = top + row_h * row + row_h / 2
        for start, stop in spans[rid]:
            x0, x1 = x(start + 0.5), x((end if stop is None else stop) + 0.5)
            style = (PALETTE[0], "") if stop is None else (PALETTE[5], "//")
            out.append(f'<rect class="span" data-root="{rid}" data-from="{start}" '
                       f'data-to="{"" if stop is None else stop}" x="{x0:.1f}" y="{cy - 0.3 * row_h:.1f}" '
                       f'width="{x1 - x0:.1f}" height="{0.6 * row_h:.1f}" fill="{fills[style]}" '
                       f'stroke="#000" stroke-width="0.6"/>')
        if rid in destroyed:
            cx = x(destroyed[rid] + 0.5)
            out.append(f'<text class="destroyed" x="{cx:.1f}" y="{cy + 6:.1f}" text-anchor="middle" '
                       f'font-size="17" font-weight="bold" fill="{PALETTE[3]}">✕</text>')
    kinds = []
    for s in outcomes:
        for k, kind in enumerate(s["tlb_flushes"]):
            if kind not in kinds:
                kinds.append(kind)
            cx = x(s["index"] + 0.5 + 0.12 * k)
            out.append(f'<path class="flush" data-kind="{html.escape(kind)}" '
                       f'transform="translate({cx:.1f} {top + row_h / 2:.1f})" '
                       f'd="{_SVG_MARK[FLUSH_MARKERS.get(kind, "o")]}" fill="{PALETTE[1]}" stroke="#000"/>')
    for j, kind in enumerate(kinds):
        ly = top + 10 + 18 * j
        out.append(f'<path transform="translate({left + pw + 18} {ly})" '
                   f'd="{_SVG_MARK[FLUSH_MARKERS.get(kind, "o")]}" fill="{PALETTE[1]}" stroke="#000"/>'
                   f'<text x="{left + pw + 30}" y="{ly + 4}">flush: {html.escape(kind)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">'
               f'step (a bar spans the steps a root is held in a slot)</text>')
    return _svg(width, height, "".join(out), f"root lifetimes over {end} steps")
