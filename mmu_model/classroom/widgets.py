"""Classroom widgets: the lab, the role explorer, the root cache and the quiz.

The ipywidgets trees around the pure views of :mod:`.views` (the lab's state
and the HTML it is drawn as, which tests read without a browser).  Factories
return the tree and never call ``display()``; the parts a notebook or a test
drives are on the tree's ``parts`` attribute.  The views' names
(``LabState``, ``shadow_pane_html``, ...) are importable from here too, as
before the split.
"""
from __future__ import annotations

from types import SimpleNamespace

import ipywidgets as W

from ..eras import all_eras, get_era
from ..harness.scenario import ScenarioError
from . import quiz as quizlib
from .views import (  # noqa: F401  (re-exported: the notebooks' and tests' names)
    BITS,
    BOX,
    BUTTON_HELP,
    FLAGS,
    RIGHT_PANES,
    ROLE_MASK,
    LabState,
    _e,
    bit_tooltip,
    cache_html,
    choice_html,
    eras_role_html,
    feedback_html,
    help_html,
    history_labels,
    legend_html,
    pane_html,
    role_html,
    shadow_pane_html,
    snapshot,
    status_html,
    summary_html,
    tdp_pane_html,
)

# ---------------------------------------------------------------------------
# Widgets

CR3_CHOICES = (("0x1000 · PCID 0", 0x1000), ("0x2001 · PCID 1", 0x2001),
               ("0x3002 · PCID 2", 0x3002), ("0x4003 · PCID 3", 0x4003),
               ("0x5004 · PCID 4", 0x5004))
NOFLUSH = 1 << 63       # CR3 bit 63 (X86_CR3_PCID_NOFLUSH) as a scenario value
INVPCID_TYPES = (("0: one address", 0), ("1: one PCID", 1), ("2: all, incl. global", 2),
                 ("3: all but global", 3))


def _bit_buttons(state: LabState, on_write, one_row: bool = False):
    """One ToggleButton per bit, named as in the kernel, kept in sync with the
    acting vCPU's registers by the returned ``sync(vcpu)``.  ``one_row`` puts
    CR0, CR4 and EFER on one line (the lab, for a projector) and leaves the
    hint to the lab's help."""
    buttons = {}
    for reg, name in BITS:
        b = W.ToggleButton(description=name, layout=W.Layout(width="auto", min_width="60px"))
        b.reg = reg
        buttons[name] = b
    busy = []

    def sync(vcpu=0):
        era = get_era(state.era)
        regs = state.registers(vcpu)
        busy.append(1)
        try:
            for name, b in buttons.items():
                b.value = bool(regs[b.reg] & FLAGS[b.reg][name])
                b.tooltip = bit_tooltip(era, b.reg, name)
                b.button_style = "info" if getattr(era, ROLE_MASK[b.reg]) & FLAGS[b.reg][name] else ""
                b.icon = "check" if b.value else ""
        finally:
            busy.pop()

    def changed(change):
        if busy:
            return
        b = change["owner"]
        op = {"cr0": "mov_cr0", "cr4": "mov_cr4", "efer": "wrmsr_efer"}[b.reg]
        key = "set" if change["new"] else "clear"
        on_write({"op": op, key: [b.description]})

    for b in buttons.values():
        b.observe(changed, names="value")
    rows = []
    for reg in ("cr0", "cr4", "efer"):
        row = [W.HTML(f"<b>{reg.upper()}</b>", layout=W.Layout(width="auto" if one_row else "44px",
                                                              margin="0 4px 0 8px" if one_row
                                                              else "0"))]
        rows.append(W.HBox(row + [b for b in buttons.values() if b.reg == reg]))
    if one_row:
        return buttons, W.HBox(rows, layout=W.Layout(flex_flow="row wrap")), sync
    rows.append(W.HTML('<span style="font-size:12px;color:#333">Blue buttons are bits in this '
                       "era's MMU role; a check mark means the bit is set. Hover over a bit, or "
                       "open “What each bit and button does”, for details.</span>"))
    return buttons, W.VBox(rows), sync


def _controller(state: LabState, redraw):
    """(act, output): ``act(event)`` applies an event, shows errors in the Output."""
    out = W.Output(layout=W.Layout(min_height="0px"))

    def act(event):
        with out:
            out.clear_output(wait=True)
            try:
                state.apply(event)
                state.last_error = None
            except ScenarioError as e:
                state.last_error = str(e)
                print(f"not applied: {e}")
        redraw()
    return act, out


def lab(era="v6.18", vendor="vmx", vcpus=1, start="long-mode-pcid", tdp_mode="tdp",
        legend_open=False):
    """The lab: register controls driving shadow paging (left) and TDP (right),
    laid out for a projector (1280x720): three rows of controls, then one line
    per pane saying what the step did and the history of steps, then the panes.

    ``.parts`` holds the controls (``bits[name]``, ``cr3``, ``noflush``, ``buttons[label]``,
    ``era``, ``vendor``, ``vcpus``, ``acting``, ``right``, ``invpcid_type``, ``history``:
    a list of the steps, pick one to look back at it), the views (``shadow``, ``tdp``:
    the panes; ``summary``: this step's lines; ``legend``, ``help``: HTML widgets)
    and the ``state`` (a LabState).
    """
    state = LabState(era, vendor, vcpus, start, modes=("shadow", tdp_mode))
    p = SimpleNamespace(state=state, viewing=None)
    p.shadow = W.HTML(layout=W.Layout(width="50%", min_width="0"))
    p.tdp = W.HTML(layout=W.Layout(width="50%", min_width="0"))
    p.summary = W.HTML(layout=W.Layout(width="54%", min_width="0", margin="2px 6px 2px 0",
                                       overflow="hidden"))
    p.history = W.Select(options=[], rows=4, description="steps",
                         layout=W.Layout(width="46%", min_width="0"),
                         style={"description_width": "40px"})
    p.legend = W.HTML(legend_html(collapsible=True).replace("<details", "<details open")
                      if legend_open else legend_html(collapsible=True))
    p.help = W.HTML()
    busy = []

    def vcpu():
        return p.acting.value

    def redraw():
        # The summary first, the panes last: a page (or a test) that waits for
        # the shadow pane to name the step then has the summary line too.
        sync(vcpu())
        shown = state if p.viewing is None else state.at(p.viewing)
        p.summary.value = summary_html(state, vcpu(), p.viewing)
        help_now = help_html(state.era)
        if p.help.value != help_now:
            p.help.value = help_now
        busy.append(1)
        try:
            labels = history_labels(state)
            p.history.options = [(label, i) for i, label in enumerate(labels)]
            p.history.value = (len(labels) - 1 if p.viewing is None else p.viewing) \
                if labels else None
        finally:
            busy.pop()
        p.tdp.value = tdp_pane_html(shown, vcpu())
        p.shadow.value = shadow_pane_html(shown, vcpu())

    def act_then_latest(event):
        p.viewing = None
        act(event)

    act, p.output = _controller(state, redraw)

    def write(ev):
        act_then_latest({**ev, "vcpu": vcpu()})

    def look_back(change):
        if busy or change["new"] is None:
            return
        p.viewing = None if change["new"] == len(state.events) - 1 else change["new"]
        redraw()
    p.history.observe(look_back, names="value")

    p.bits, bit_box, sync = _bit_buttons(state, write, one_row=True)
    p.era = W.Dropdown(options=[e.name for e in all_eras()], value=era, description="era",
                       layout=W.Layout(width="170px"), style={"description_width": "28px"})
    p.vendor = W.Dropdown(options=["vmx", "svm"], value=vendor, description="vendor",
                          layout=W.Layout(width="130px"), style={"description_width": "48px"})
    p.vcpus = W.Dropdown(options=[1, 2, 3, 4], value=vcpus, description="vCPUs",
                         layout=W.Layout(width="110px"), style={"description_width": "44px"})
    p.acting = W.Dropdown(options=list(range(vcpus)), value=0, description="acting vCPU",
                          layout=W.Layout(width="150px"), style={"description_width": "80px"})
    p.right = W.Dropdown(options=RIGHT_PANES, value=tdp_mode, description="right pane",
                         layout=W.Layout(width="290px"), style={"description_width": "70px"})
    p.cr3 = W.Dropdown(options=CR3_CHOICES, value=0x2001, description="CR3",
                       layout=W.Layout(width="200px"), style={"description_width": "32px"})
    p.noflush = W.Checkbox(value=False, description="no-flush (bit 63)", indent=False,
                           layout=W.Layout(width="140px"))
    p.invpcid_type = W.Dropdown(options=INVPCID_TYPES, value=1, description="type",
                                layout=W.Layout(width="190px"), style={"description_width": "36px"})

    def mov_cr3():
        write({"op": "mov_cr3", "value": p.cr3.value | (NOFLUSH if p.noflush.value else 0)})

    def invpcid():
        write({"op": "invpcid", "type": p.invpcid_type.value, "pcid": p.cr3.value & 0xFFF,
               "addr": 0x1000})

    def undo():
        p.viewing = None
        state.undo()
        redraw()

    def reset():
        p.viewing = None
        state.reset()
        redraw()

    actions = {
        "MOV CR3": mov_cr3,
        "INVLPG": lambda: write({"op": "invlpg", "addr": 0x1000}),
        "INVPCID": invpcid,
        "SMI": lambda: write({"op": "smi"}),
        "RSM": lambda: write({"op": "rsm"}),
        "KVM_SET_SREGS": lambda: write({"op": "set_sregs", **state.start_registers()}),
        "INIT": lambda: write({"op": "init"}),
        "Undo": undo,
        "Reset": reset,
    }
    p.buttons = {}
    for label, fn in actions.items():
        b = W.Button(description=label, tooltip=BUTTON_HELP[label],
                     layout=W.Layout(width="auto"),
                     button_style="warning" if label in ("Undo", "Reset") else "")
        b.on_click(lambda _b, fn=fn: fn())
        p.buttons[label] = b

    def reconfigure(change):
        if change["owner"] is p.vcpus:
            p.acting.options = list(range(p.vcpus.value))
        p.viewing = None
        state.configure(era=p.era.value, vendor=p.vendor.value, vcpus=p.vcpus.value,
                        modes=("shadow", p.right.value))
        redraw()
    for w in (p.era, p.vendor, p.vcpus, p.right):
        w.observe(reconfigure, names="value")
    p.acting.observe(lambda _c: redraw(), names="value")

    b = p.buttons
    tree = W.VBox([
        W.HBox([p.era, p.vendor, p.vcpus, p.acting, p.right, b["Undo"], b["Reset"]],
               layout=W.Layout(flex_flow="row wrap")),
        bit_box,
        W.HBox([p.cr3, p.noflush, b["MOV CR3"], b["INVLPG"], p.invpcid_type, b["INVPCID"],
                b["SMI"], b["RSM"], b["KVM_SET_SREGS"], b["INIT"]],
               layout=W.Layout(flex_flow="row wrap")),
        W.HBox([p.summary, p.history], layout=W.Layout(align_items="stretch")),
        W.HBox([p.legend, p.help], layout=W.Layout(flex_flow="row wrap", grid_gap="12px")),
        p.output, W.HBox([p.shadow, p.tdp]),
    ], layout=W.Layout(min_width="0"))
    tree.add_class("mmu-lab")
    tree.parts = p
    redraw()
    return tree


def role_explorer(era="v6.18", vendor="vmx", start="long-mode"):
    """Toggle register bits and see the CPU role and root role they give, for
    shadow paging and TDP, and which eras keep guest bits in the TDP root role."""
    state = LabState(era, vendor, 1, start)
    p = SimpleNamespace(state=state)
    p.roles = W.HTML()
    p.eras = W.HTML()
    p.status = W.HTML()

    p.help = W.HTML()

    def redraw():
        sync(0)
        help_now = help_html(state.era)
        if p.help.value != help_now:
            p.help.value = help_now
        p.roles.value = role_html(state)
        p.eras.value = eras_role_html(state.registers())
        step = state.last("shadow")[0]
        p.status.value = status_html(step)

    act, p.output = _controller(state, redraw)
    p.bits, bit_box, sync = _bit_buttons(state, act)
    p.era = W.Dropdown(options=[e.name for e in all_eras()], value=era, description="era")

    def reconfigure(_c):
        state.era = p.era.value
        state.rebuild()
        redraw()
    p.era.observe(reconfigure, names="value")
    p.reset = W.Button(description="Reset", button_style="warning")
    p.reset.on_click(lambda _b: (state.reset(), redraw()))
    tree = W.VBox([W.HBox([p.era, p.reset]), bit_box, p.help, p.output, p.status, p.roles,
                   W.HTML("<b>Every era, for these registers:</b>"), p.eras])
    tree.parts = p
    redraw()
    return tree


def root_cache(era="v6.18", mode="shadow", vendor="vmx", start="long-mode-pcid"):
    """One CR3 button per address space, a no-flush checkbox and the PCIDE bit;
    shows the current root and prev_roots in LRU order after every switch."""
    state = LabState(era, vendor, 1, start, modes=(mode,))
    p = SimpleNamespace(state=state)
    p.cache = W.HTML()

    def redraw():
        sync(0)
        p.cache.value = cache_html(state.sims[mode], *state.last(mode))

    act, p.output = _controller(state, redraw)
    p.bits, _box, sync = _bit_buttons(state, act)
    p.noflush = W.Checkbox(value=False, description="no-flush (bit 63)", indent=False)
    p.cr3 = {}
    for label, value in CR3_CHOICES:
        b = W.Button(description=f"CR3={value:#x}", tooltip=label,
                     layout=W.Layout(width="auto"))
        b.on_click(lambda _b, v=value: act(
            {"op": "mov_cr3", "value": v | (NOFLUSH if p.noflush.value else 0)}))
        p.cr3[value] = b
    p.undo = W.Button(description="Undo", button_style="warning")
    p.undo.on_click(lambda _b: (state.undo(), redraw()))
    tree = W.VBox([W.HBox(list(p.cr3.values()) + [p.noflush]),
                   W.HBox([W.HTML("<b>CR4</b>&nbsp;"), p.bits["PCIDE"], p.undo]),
                   p.output, W.HTML(legend_html()), p.cache])
    tree.parts = p
    redraw()
    return tree


# ---------------------------------------------------------------------------
# Predict, then reveal

MARKS = ("?", "freed", "kept")
ANY = "any"


def _question_box(q):
    """One question: its text, a mark per root, the root's source, a flush;
    each choice is shown beside it as CHOSEN (icon, word, border); Reveal
    marks every part RIGHT, WRONG or NO ANSWER the same way."""
    item = SimpleNamespace(q=q, marks={}, chosen={}, revealed=False, score=None)
    rows = []

    def choice(widget, key):
        badge = W.HTML(choice_html(widget.value))
        item.chosen[key] = badge

        def update(_c=None):
            badge.value = choice_html(widget.value)
            if isinstance(widget, W.ToggleButtons):
                widget.icons = ["check" if o == widget.value and o != "?" else ""
                                for o in widget.options]
        widget.observe(update, names="value")
        update()
        return W.HBox([widget, badge], layout=W.Layout(align_items="center"))

    for rid in q["before_ids"]:
        t = W.ToggleButtons(options=MARKS, value="?", description=f"root #{rid}",
                            style={"button_width": "64px"})
        item.marks[rid] = t
        rows.append(choice(t, f"root #{rid}"))
    item.source = W.Dropdown(options=("?",) + quizlib.SOURCES, value="?",
                             description="current root from")
    item.source.style.description_width = "120px"
    rows.append(choice(item.source, "current root from"))
    item.flush = W.ToggleButtons(options=("?", "yes", "no"), value="?",
                                 description="a TLB flush?", style={"button_width": "50px"})
    rows.append(choice(item.flush, "a TLB flush"))
    item.reveal = W.Button(description="Reveal", button_style="primary")
    item.answer = W.HTML()

    def reveal(_b):
        item.score = score(item)
        item.revealed = True
        a = item.q["answer"]
        mine = [(f"root #{rid}", t.value, a["roots"][rid]) for rid, t in item.marks.items()]
        mine += [("current root from", item.source.value, a["root_source"]),
                 ("a TLB flush", item.flush.value, "yes" if a["tlb_flushes"] else "no")]
        item.answer.value = feedback_html(mine, item.score, quizlib.answer_text(item.q))
    item.reveal.on_click(reveal)
    head = W.HTML(f'<pre style="{BOX}font-family:monospace;white-space:pre-wrap">'
                  f'{_e(quizlib.question_text(q))}</pre>')
    box = W.VBox([head] + rows + [item.reveal, item.answer],
                 layout=W.Layout(border="1px solid #bbb", padding="6px", margin="4px 0"))
    return item, box


def predict(seed: int = 0, n: int = 3, era=None, mode=None, nested: bool = True,
            level=None, controls: bool = False):
    """The quiz as a widget: for each question the student marks each root
    freed or kept and picks where the current root comes from, then reveals.

    ``era``, ``mode`` (a name or a list of names), ``nested=False`` and
    ``level`` (1, 2 or 3) scope the questions as ``quiz --era --mode
    --no-nested --level`` do.  ``controls=True`` adds menus for them and a
    "New questions" button, so a teacher can re-scope in the page.
    """
    p = SimpleNamespace(items=[], questions=[])
    body = W.VBox()

    def build(seed, era, mode, nested, level):
        p.questions = quizlib.generate(seed, n, eras=era, modes=mode, nested=nested,
                                       level=level)
        p.items, boxes = [], []
        for q in p.questions:
            item, box = _question_box(q)
            p.items.append(item)
            boxes.append(box)
        body.children = boxes

    build(seed, era, mode, nested, level)
    if not controls:
        tree = W.VBox([body])
        tree.parts = p
        return tree
    p.seed = W.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed",
                              layout=W.Layout(width="150px"), style={"description_width": "36px"})
    p.era = W.Dropdown(options=[ANY] + list(quizlib.ERAS), value=era or ANY, description="era",
                       layout=W.Layout(width="170px"), style={"description_width": "28px"})
    p.mode = W.Dropdown(options=[ANY] + list(quizlib.MODES), value=mode or ANY,
                        description="mode", layout=W.Layout(width="190px"),
                        style={"description_width": "36px"})
    p.nested = W.Checkbox(value=not nested, description="no nesting", indent=False,
                          layout=W.Layout(width="110px"))
    p.level = W.Dropdown(options=[(ANY, None)] + [(f"{k}: {v}", k) for k, v in
                                                  quizlib.LEVELS_HELP.items()],
                         value=level, description="level", layout=W.Layout(width="330px"),
                         style={"description_width": "36px"})
    p.new = W.Button(description="New questions", button_style="primary")

    def regenerate(_b=None):
        pick = (lambda w: None if w.value == ANY else w.value)
        build(p.seed.value, pick(p.era), pick(p.mode), not p.nested.value, p.level.value)
    p.new.on_click(regenerate)
    tree = W.VBox([W.HBox([p.seed, p.era, p.mode, p.nested, p.level, p.new],
                          layout=W.Layout(flex_flow="row wrap")), body])
    tree.parts = p
    return tree


def score(item) -> tuple[int, int]:
    """(right, asked) for one question of :func:`predict`."""
    a = item.q["answer"]
    right = sum(t.value == a["roots"][rid] for rid, t in item.marks.items())
    right += item.source.value == a["root_source"]
    right += item.flush.value == ("yes" if a["tlb_flushes"] else "no")
    return right, len(item.marks) + 2


def panes(state: LabState, vcpu: int = 0):
    """The legend and the two panes for a LabState, as a static widget tree
    (for notebooks that step a LabState from code)."""
    shadow = W.HTML(shadow_pane_html(state, vcpu), layout=W.Layout(width="50%", min_width="0"))
    tdp = W.HTML(tdp_pane_html(state, vcpu), layout=W.Layout(width="50%", min_width="0"))
    tree = W.VBox([W.HTML(legend_html()), W.HBox([shadow, tdp])])
    tree.parts = SimpleNamespace(state=state, shadow=shadow, tdp=tdp)
    return tree
