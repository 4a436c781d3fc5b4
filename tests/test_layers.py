"""The package's layers: imports run one way and never in a circle."""
import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "mmu_model"
# Lower layers first.  A module may import its own subpackage and lower layers only;
# the kernel mirror never reaches the architecture's side (the checker's guest model).
LAYERS = [{"kernel"}, {"eras", "arch"}, {"harness"}, {"analysis", "probe"}, {"classroom"},
          {"__init__"}, {"cli"}, {"__main__"}]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules) -> set[str]:
    """Every mmu_model module ``path`` imports, at any depth (lazy imports count).
    ``from pkg import name`` counts as importing pkg.name where that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("mmu_model"):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports (names resolved to files)."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    edges = {}
    for mod, path in modules.items():
        edges[mod] = {t for t in imports(path, modules) if t in modules and t != mod}
    return edges


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_is_in_a_layer():
    unknown = sorted({layer(m) for m in graph()} - set(RANK))
    assert not unknown, f"modules outside the layers: {unknown}"


def test_imports_run_one_way():
    wrong = [f"{m} -> {t}" for m, ts in graph().items() for t in ts
             if layer(t) != layer(m) and RANK[layer(t)] >= RANK[layer(m)]]
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    edges = graph()
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_kernel_mirror_stands_alone():
    """kernel/ imports nothing but kernel/ (no eras, checker, harness or UI)."""
    for mod, ts in graph().items():
        if layer(mod) == "kernel":
            assert all(layer(t) == "kernel" for t in ts), (mod, ts)
