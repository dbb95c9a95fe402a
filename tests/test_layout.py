"""The shape of the code: imports run one way, no circles, small modules.

- `router` (serving and the shared contracts) imports neither `proxy` nor `training`;
- `training` does not import `proxy`;
- `proxy` imports `training` only inside functions of the refit worker, the CLI and
  the development tools in `proxy/sim` (never on the serving path);
- no module imports, at load time, a module that imports it back;
- no module is over 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "proxy", "training")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".")
        is_package = modules()[module].name == "__init__.py"
        keep = len(package) - node.level + (1 if is_package else 0)
        base = ".".join(package[:keep] + ([node.module] if node.module else []))
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [base, *names]


def imports(module: str, load_time_only: bool) -> set[str]:
    """Project modules `module` imports; with `load_time_only`, not those inside functions
    or `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = True
            if isinstance(child, ast.Import) and not (load_time_only and inner):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and not (load_time_only and inner):
                found.update(_resolve(module, child))
            visit(child, inner)

    visit(tree, False)
    known = modules()
    return {name for name in found if name in known and name != module}


def test_router_imports_neither_wing():
    for module in modules():
        if module.startswith("router"):
            bad = {m for m in imports(module, False) if not m.startswith("router")}
            assert not bad, f"{module} imports {bad}"


def test_training_never_imports_the_proxy():
    for module in modules():
        if module.startswith("training"):
            bad = {m for m in imports(module, False) if m.startswith("proxy")}
            assert not bad, f"{module} imports {bad}"


def test_the_proxy_imports_training_only_lazily_where_it_trains():
    allowed = ("proxy.refit_worker", "proxy.cli", "proxy.sim.")
    for module in modules():
        if not module.startswith("proxy"):
            continue
        eager = {m for m in imports(module, True) if m.startswith("training")}
        assert not eager, f"{module} imports {eager} at load time"
        lazy = {m for m in imports(module, False) if m.startswith("training")}
        if lazy:
            assert module.startswith(allowed), f"{module} imports {lazy}"


def test_no_import_circles():
    graph = {m: imports(m, True) for m in modules()}
    # A package's __init__ re-exporting its own modules is not a circle of logic.
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not (module.startswith(d + ".") and d in graph)}
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)


def test_no_module_is_over_400_lines():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long
