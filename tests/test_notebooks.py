"""Notebooks are committed without outputs (CI executes them separately), and
each exists twice: NAME.md, MyST Markdown that Jupytext pairs with NAME.ipynb.
The .md is what a reviewer reads and diffs; the .ipynb is what students open.
The two must say the same thing, cell for cell."""
import difflib
import json

import jupytext
import nbformat
import pytest
from conftest import ROOT
from jupytext.config import load_jupytext_config

NOTEBOOKS = ROOT / "notebooks"
IPYNB = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_notebooks_have_no_outputs():
    assert IPYNB, "no notebooks found"
    for path in IPYNB:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and not cell.get("execution_count"), path.name


def test_jupytext_pairs_every_notebook_with_its_text():
    """The configuration JupyterLab's Jupytext reads: saving either file writes both."""
    config = load_jupytext_config(str(NOTEBOOKS))
    assert config is not None, "no jupytext.toml applies to notebooks/"
    formats = config.formats if isinstance(config.formats, str) else ",".join(config.formats)
    assert set(formats.split(",")) == {"ipynb", "md:myst"}, config.formats


def test_every_notebook_has_a_text_file_and_every_text_file_a_notebook():
    md = {p.stem for p in NOTEBOOKS.glob("*.md")}
    assert md == {p.stem for p in IPYNB}


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


@pytest.mark.parametrize("path", IPYNB, ids=[p.stem for p in IPYNB])
def test_the_pair_agrees(path):
    notebook = nbformat.read(path, as_version=4)
    text = jupytext.read(path.with_suffix(".md"))
    a, b = _cells(notebook), _cells(text)
    if a != b:
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        x = a[i] if i < len(a) else ("(none)", "")
        y = b[i] if i < len(b) else ("(none)", "")
        diff = "\n".join(difflib.unified_diff(x[1].splitlines(), y[1].splitlines(), path.name,
                                              path.with_suffix(".md").name, lineterm=""))
        pytest.fail(f"{path.stem}: cell {i} differs ({x[0]} vs {y[0]}); "
                    f"run .venv/bin/jupytext --sync notebooks/{path.stem}.md (the newer file "
                    f"wins)\n{diff}")
    assert notebook.metadata.get("kernelspec") == text.metadata.get("kernelspec")


@pytest.mark.parametrize("edited,other", [("04-lab.ipynb", "04-lab.md"),
                                          ("03-root-cache.md", "03-root-cache.ipynb")])
def test_saving_either_file_as_jupyterlab_does_updates_the_other(tmp_path, edited, other):
    """JupyterLab saves through the server's contents manager, which Jupytext
    (a server extension once installed) wraps: an edit saved in either file of
    a pair reaches the other, and the .ipynb stays without outputs."""
    import shutil

    from jupytext import TextFileContentsManager  # what the server extension installs
    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks")
    cm = TextFileContentsManager(root_dir=str(tmp_path))
    model = cm.get(f"notebooks/{edited}", type="notebook")
    cell = next(c for c in model["content"]["cells"] if c["cell_type"] == "markdown")
    cell["source"] += "\n\nAn edit made in JupyterLab."
    cm.save(model, f"notebooks/{edited}")
    assert "An edit made in JupyterLab." in (tmp_path / "notebooks" / other).read_text()
    saved = json.loads((tmp_path / "notebooks" / other.replace(".md", ".ipynb")).read_text())
    assert not any(c.get("outputs") for c in saved["cells"])
