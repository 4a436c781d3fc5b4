"""A static handout: every notebook executed and rendered to HTML, widgets frozen.

An HTML export normally shows widgets only if a page can fetch the widget
library from a CDN, which a handout read offline cannot.  So after running
each notebook this replaces every widget output by a frozen HTML copy built
from the saved widget state: boxes become flex rows, HTML widgets keep their
value (the diagrams), buttons, toggles and drop-downs are drawn disabled with
their values.  Charts are images already.

Nothing on a page is fetched from the network: the pages use an nbconvert
template of the project's own (tools/handout_template/offline) that is
nbconvert's lab template without the scripts it loads from a CDN (require.js,
MathJax, mermaid.js, the widget renderer; the notebooks have no math, and
their widgets are frozen); styles and images are inline.

    ./run handout            # writes handout/index.html and handout/NN-*.html

It also renders the teacher's pack (teacher/*.md, with the worked answers) to
handout/teacher/*.html, linked from no student page: hand out handout/ without
that folder.
"""
from __future__ import annotations

import argparse
import base64
import html
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
TEMPLATES = ROOT / "tools" / "handout_template"


def exporter() -> HTMLExporter:
    """nbconvert's HTML exporter with the offline template (see the docstring)."""
    return HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)],
                        embed_images=True)            # notebook 01's figure, inline


def _ref(value):
    return value[len("IPY_MODEL_"):] if isinstance(value, str) and value.startswith("IPY_MODEL_") else None


def frozen(model_id: str, state: dict, depth: int = 0) -> str:
    """Static HTML for one widget model and its children."""
    m = state.get(model_id)
    if m is None or depth > 40:
        return ""
    s, name = m["state"], m["model_name"]
    kids = [frozen(_ref(c), state, depth + 1) for c in s.get("children", []) if _ref(c)]
    desc = html.escape(str(s.get("description", "")))
    label = f'<span style="margin-right:4px">{desc}</span>' if desc else ""
    if name in ("VBoxModel", "BoxModel", "GridBoxModel"):
        return f'<div style="display:flex;flex-direction:column;gap:2px">{"".join(kids)}</div>'
    if name == "HBoxModel":
        return ('<div style="display:flex;flex-wrap:wrap;gap:2px;align-items:flex-start">'
                + "".join(f'<div style="flex:1 1 0;min-width:0">{k}</div>' if "mmu-pane" in k
                          else k for k in kids) + "</div>")
    if name in ("HTMLModel", "HTMLMathModel"):
        return f'<div>{s.get("value", "")}</div>'
    if name == "ToggleButtonModel":
        on = "✓ " if s.get("value") else ""
        return f'<button disabled style="margin:1px">{on}{desc}</button>'
    if name == "ButtonModel":
        return f'<button disabled style="margin:1px">{desc}</button>'
    if name in ("DropdownModel", "ToggleButtonsModel", "SelectModel", "RadioButtonsModel"):
        labels = s.get("_options_labels", [])
        i = s.get("index")
        chosen = html.escape(str(labels[i])) if isinstance(i, int) and i < len(labels) else ""
        return (f'<span style="margin:2px 6px 2px 0">{label}<select disabled>'
                f"<option>{chosen}</option></select></span>")
    if name == "CheckboxModel":
        mark = "checked" if s.get("value") else ""
        return f'<label style="margin:2px 6px"><input type="checkbox" disabled {mark}> {desc}</label>'
    if name == "OutputModel":
        texts = [o.get("text", "") for o in s.get("outputs", []) if o.get("output_type") == "stream"]
        return f'<pre>{html.escape("".join(texts))}</pre>' if any(texts) else ""
    if name.endswith("TextModel") or name.endswith("LabelModel"):
        return f'<span>{label}{html.escape(str(s.get("value", "")))}</span>'
    return "".join(kids)


def freeze_widgets(nb) -> int:
    """Replace widget-view outputs by frozen HTML; returns how many."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                data["text/html"] = ('<div class="frozen-widget" style="border:1px dashed #999;'
                                     'padding:4px">' + frozen(data[WIDGET_VIEW]["model_id"], state)
                                     + "</div>")
                del data[WIDGET_VIEW]
                n += 1
    nb.metadata.pop("widgets", None)
    return n


def build(notebooks, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    export = exporter()
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        freeze_widgets(nb)
        body, _ = export.from_notebook_node(nb, {"metadata": {"path": str(path.parent)}})
        target = out_dir / f"{path.stem}.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    items = "".join(f'<li><a href="{p.name}">{html.escape(p.stem)}</a></li>' for p in written)
    (out_dir / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>KVM MMU Root Lab - handout</title>"
        "<body style='font-family:sans-serif;max-width:50em;margin:2em auto'>"
        "<h1>KVM MMU Root Lab</h1><p>The notebooks in reading order, run and frozen: "
        "a widget shows its state at the end of the notebook; nothing here is interactive.</p>"
        f"<ol>{items}</ol></body>", encoding="utf-8")
    return written


def teacher_pack(out_dir: Path, source: Path = ROOT / "teacher") -> list[Path]:
    """teacher/*.md as standalone HTML pages in ``out_dir``, images inlined."""
    import mistune
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def inline(m):
        img = (source / m.group(2)).resolve()
        kind = "svg+xml" if img.suffix == ".svg" else img.suffix.lstrip(".")
        data = base64.b64encode(img.read_bytes()).decode() if img.is_file() else ""
        return f'{m.group(1)}data:image/{kind};base64,{data}"' if data else m.group(0)

    for md in sorted(source.glob("*.md")):
        body = mistune.html(md.read_text(encoding="utf-8"))
        body = re.sub(r'href="([\w-]+)\.md"', r'href="\1.html"', body)
        body = re.sub(r'(<img [^>]*src=")([^":]+)"', inline, body)
        name = "index" if md.stem == "README" else md.stem
        target = out_dir / f"{name}.html"
        target.write_text("<!doctype html><meta charset='utf-8'>"
                          f"<title>KVM MMU Root Lab - teacher's pack - {html.escape(name)}</title>"
                          "<body style='font-family:sans-serif;max-width:56em;margin:2em auto;"
                          "line-height:1.4'>" + body + "</body>", encoding="utf-8")
        written.append(target)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/NN-*.ipynb")
    ap.add_argument("--out", default=str(ROOT / "handout"))
    args = ap.parse_args(argv)
    paths = ([Path(p) for p in args.notebooks]
             or sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb")))
    pages = build([p.resolve() for p in paths], Path(args.out))
    pages += teacher_pack(Path(args.out) / "teacher")
    for p in pages:
        print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
