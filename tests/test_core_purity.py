"""The core model imports no UI library and prints nothing."""
import ast

from conftest import ROOT

UI = {"ipywidgets", "matplotlib", "IPython", "traitlets"}
UI_MODULES = {"classroom/widgets.py", "classroom/plots.py"}     # the only modules allowed to use them


def rel(path) -> str:
    return path.relative_to(ROOT / "mmu_model").as_posix()


def test_core_modules_import_no_ui_library():
    for path in sorted((ROOT / "mmu_model").rglob("*.py")):
        if rel(path) in UI_MODULES:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in UI, f"{rel(path)} imports {n}"


def test_model_has_no_print():
    for path in sorted((ROOT / "mmu_model").rglob("*.py")):
        if rel(path) in {"cli.py", "__main__.py"} | UI_MODULES:
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "print"]
        assert not calls, f"{rel(path)} prints"
