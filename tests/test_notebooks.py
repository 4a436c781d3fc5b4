"""Notebooks are committed without outputs (CI executes them separately)."""
import json

from conftest import ROOT


def test_notebooks_have_no_outputs():
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert paths, "no notebooks found"
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and not cell.get("execution_count"), path.name
