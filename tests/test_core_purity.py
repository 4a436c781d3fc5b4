"""The core model imports no UI library and prints nothing."""
import ast

from conftest import ROOT

UI = {"ipywidgets", "matplotlib", "IPython", "traitlets"}
UI_MODULES = {"widgets.py", "plots.py"}     # the only modules allowed to use them


def test_core_modules_import_no_ui_library():
    for path in sorted((ROOT / "mmu_model").glob("*.py")):
        if path.name in UI_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in UI, f"{path.name} imports {n}"


def test_model_has_no_print():
    for path in sorted((ROOT / "mmu_model").glob("*.py")):
        if path.name in {"cli.py", "__main__.py"} | UI_MODULES:
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "print"]
        assert not calls, f"{path.name} prints"
