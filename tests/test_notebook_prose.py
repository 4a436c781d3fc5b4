"""Prose must not outrun the output: what a notebook (or the teacher's pack)
says about an output is what that output shows.

* The notebooks with lab panes (01-05) are executed as a student runs them
  (Run All), and every output is read as it looks at the end, widgets in their
  final state, as JupyterLab and the handout show it.  A Markdown cell right
  after an output may name, in it, only what that output shows: the state
  tags (`KEPT`, `DESTROYED`, ...), root ids (#2), slots (`prev0`) and pgds; and
  a section whose heading names an era shows panes of that era.  This is what
  catches a later cell redrawing an earlier picture (notebook 04's v5.17
  section once showed v6.18, because both cells showed the same live pane).
* Notebook 07's search results (search, replay, ablation_rows) change when the
  search changes, so no Markdown cell after one may type a fact about it (an
  address, a root id, a step or program count): those sentences are built from
  the results in code cells, and each result is read by an assert, which
  nbmake executes.  (07 is not executed here a second time: its searches take
  most of a minute.)
* The teacher's pack states outputs only next to a Python block that computes
  and asserts them: every block runs here, and every exercise has an answer.
* The vocabulary names every request and state that appears on screen.
"""
from __future__ import annotations

import html
import json
import re

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOKS = ROOT / "notebooks"
TEACHER = ROOT / "teacher"
EXECUTED = ["01-two-ways", "02-mmu-role", "03-root-cache", "04-lab", "05-other-flows"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STATE_TAGS = {"NEW", "REUSED", "KEPT", "FREED", "DESTROYED", "UNUSED", "EMPTY"}
ERA = r"(v\d+\.\d+|seed-v\d|review-sketch)"


def visible(markup: str) -> str:
    """The text a reader sees in an HTML fragment."""
    markup = re.sub(r"<(style|script)\b.*?</\1>", " ", markup, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def widget_text(model_id: str, state: dict, depth: int = 0) -> str:
    """Everything a widget and its children show, in their final state."""
    m = state.get(model_id)
    if m is None or depth > 40:
        return ""
    s = m["state"]
    parts = [visible(str(s.get("value", ""))) if m["model_name"].startswith("HTML") else "",
             str(s.get("description", ""))]
    for child in s.get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            parts.append(widget_text(child[len("IPY_MODEL_"):], state, depth + 1))
    return " ".join(parts)


def output_text(out: dict, state: dict) -> str:
    if out.get("output_type") == "stream":
        return out["text"]
    data = out.get("data", {})
    if WIDGET_VIEW in data:
        return widget_text(data[WIDGET_VIEW]["model_id"], state)
    if "text/html" in data:
        return visible(data["text/html"])
    return data.get("text/plain", "")


def has_display(cell) -> bool:
    return any(WIDGET_VIEW in o.get("data", {}) or "text/html" in o.get("data", {})
               for o in cell.get("outputs", []))


_executed: dict = {}


def executed(name: str):
    """The notebook run top to bottom in a clean kernel, with its widget state."""
    if name not in _executed:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
        _executed[name] = nb
    return _executed[name]


def commentary(nb):
    """(heading, code cell, its text as seen at the end, the Markdown right after it)."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    heading, out = "", []
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown":
            heads = re.findall(r"^#{1,3} (.+)$", cell.source, re.M)
            if i and cells[i - 1].cell_type == "code" and has_display(cells[i - 1]):
                seen = " ".join(output_text(o, state) for o in cells[i - 1].outputs)
                out.append((heading, cells[i - 1].source, seen, cell.source.split("\n#")[0]))
            heading = heads[-1] if heads else heading
    return out


def prose_facts(md: str) -> set:
    """What a Markdown cell states about the output above it, as tokens to find."""
    facts = set()
    for tok in re.findall(r"`([^`]+)`", md):
        if tok in STATE_TAGS or re.fullmatch(r"prev[0-2]|#\d+|pgd 0x[0-9a-f]+", tok):
            facts.add(tok)
    facts |= set(re.findall(r"(?<![\w`])#\d+\b", md))
    return facts


@pytest.mark.parametrize("name", EXECUTED)
def test_prose_names_only_what_the_output_above_shows(name):
    problems = []
    for heading, source, seen, md in commentary(executed(name)):
        for fact in sorted(prose_facts(md)):
            if not re.search(rf"(?<![\w#]){re.escape(fact)}(?!\w)", seen):
                problems.append(f"[{heading}] the text says {fact!r}, the output of "
                                f"{source.splitlines()[-1]!r} does not show it")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", EXECUTED)
def test_a_section_about_an_era_shows_that_era(name):
    """Under a heading that names an era, every lab pane shown is of that era."""
    problems = []
    for heading, source, seen, _md in commentary(executed(name)):
        named = re.findall(rf"\b{ERA}\b", heading)
        shown = set(re.findall(rf"· {ERA} · (?:vmx|svm) ·", seen))
        if named and shown and shown != set(named):
            problems.append(f"[{heading}] {source.splitlines()[-1]!r} shows {sorted(shown)}")
    assert not problems, "\n".join(problems)


def test_the_v5_17_section_of_the_lab_shows_v5_17_destroying_the_tree():
    """Issue 14's report, as a test: the picture under 'The same action in v5.17'."""
    [seen] = [s for h, _src, s, _md in commentary(executed("04-lab")) if "v5.17" in h]
    assert "TDP (TDP MMU) · v5.17" in seen and "v6.18" not in seen
    assert "DESTROYED" in seen and "VM exit" in seen


def test_flushed_current_current_is_explained_where_it_first_appears():
    for name in EXECUTED:
        for _h, _src, seen, md in commentary(executed(name)):
            if "FLUSHED: current, current" in seen:
                assert "current, current" in md, f"{name}: shown without a word on it"
                return
    pytest.fail("no notebook shows 'FLUSHED: current, current' any more: move this check")


# ---------------------------------------------------------------------------
# Notebook 07: facts about search results are computed, and asserted.

SEARCH_CALL = re.compile(r"^(\w+) = (search|replay|ablation_rows)\(", re.M)
TYPED_FACT = re.compile(
    r"0x[0-9a-f]{3,}|(?<![\w`])#\d+\b|\b\d[\d,]* (programs|steps)\b|\bsteps? \d+\b"
    r"|\b(one|two|three|four|five|six|seven|eight|nine|ten)-step\b", re.I)


def cells_07():
    return nbformat.read(NOTEBOOKS / "07-review-do-not-unload-roots.ipynb", as_version=4).cells


def test_07_types_no_fact_about_a_search_result():
    """From a search/replay/ablation cell to the next heading, Markdown types no
    address, root id, step or program count: code cells compute those."""
    problems, after = [], None
    for cell in cells_07():
        if cell.cell_type == "code":
            if re.search(r"\b(search|replay|ablation_rows)\(", cell.source):
                after = cell.source.splitlines()[0]
            continue
        if after is None:
            continue
        parts = re.split(r"^#{1,4} ", cell.source, maxsplit=1, flags=re.M)
        for m in TYPED_FACT.finditer(parts[0]):
            problems.append(f"after {after!r}: the text types {m.group(0)!r}")
        if len(parts) > 1:          # a heading: a new subject starts
            after = None
    assert not problems, "\n".join(problems)


def test_07_every_search_result_is_read_by_an_assert():
    cells = cells_07()
    code = [c.source for c in cells if c.cell_type == "code"]
    names = [m.group(1) for src in code for m in SEARCH_CALL.finditer(src)]
    assert len(names) >= 6
    for name in names:
        readers = [src for src in code
                   if re.search(rf"\b{name}\b", re.sub(rf"^{name} = ", "", src, flags=re.M))]
        assert any(re.search(r"^\s*assert\b", src, re.M) for src in readers), \
            f"no cell that asserts reads {name}"


def test_07_sentences_about_results_are_built_from_them():
    """The cells that describe a reproduction build their Markdown from it."""
    built = [c.source for c in cells_07() if c.cell_type == "code" and "Markdown(" in c.source]
    assert len(built) >= 4
    for src in built:
        assert re.search(r"\{[^}]+\}", src), "a Markdown( cell with nothing computed in it"


# ---------------------------------------------------------------------------
# The teacher's pack and the vocabulary

def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("page", ["answers.md", "misconceptions.md"])
def test_teacher_pack_code_shows_what_it_says(page):
    from mmu_model.eras import ERAS
    blocks = python_blocks(TEACHER / page)
    assert blocks
    before, env = set(ERAS), {}
    try:
        for k, block in enumerate(blocks):
            exec(compile(block, f"teacher/{page} block {k + 1}", "exec"), env)
    finally:
        for name in set(ERAS) - before:
            del ERAS[name]


def exercises():
    """(notebook number, exercise number) for every exercise of every notebook."""
    out = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "markdown" and "## Exercises" in src:
                part = src.split("## Exercises", 1)[1].split("\n## ", 1)[0]
                out += [(path.name[:2], n) for n in re.findall(r"^(\d+)\. ", part, re.M)]
    return out


def test_every_exercise_has_a_worked_answer():
    answers = (TEACHER / "answers.md").read_text()
    found = exercises()
    assert len(found) >= 19
    missing = [f"{nb}.{n}" for nb, n in found if not re.search(rf"^### {nb}\.{n} ", answers, re.M)]
    assert not missing, f"exercises without a worked answer in teacher/answers.md: {missing}"


def test_students_notebooks_carry_no_answers():
    for path in NOTEBOOKS.glob("*.ipynb"):
        assert "answers.md" not in path.read_text(), path.name


def vocabulary(name):
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    return "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("name", ["00-index", "04-lab"])
def test_vocabulary_names_every_name_on_screen(name):
    """Every request the model raises and every state the panes draw is explained."""
    from mmu_model.kernel.requests import KVM_REQ
    text = vocabulary(name)
    names = [r.value for r in KVM_REQ] + sorted(STATE_TAGS) + ["FLUSHED"]
    missing = [n for n in names if f"**{n}**" not in text and f"**`{n}`**" not in text]
    assert not missing, f"{name}'s vocabulary does not explain {missing}"


def test_teacher_pack_renders_into_the_handout(tmp_path):
    """./run handout writes the pack to handout/teacher/, links and figure working offline."""
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    from handout import teacher_pack
    pages = {p.name: p.read_text() for p in teacher_pack(tmp_path)}
    assert set(pages) == {"index.html", "answers.html", "misconceptions.html", "notebooks.html",
                          "plans.html"}
    assert 'href="answers.html"' in pages["index.html"] and ".md\"" not in pages["index.html"]
    assert 'src="data:image/svg+xml;base64,' in pages["index.html"]
    assert "<h3>00.1" in pages["answers.html"]
