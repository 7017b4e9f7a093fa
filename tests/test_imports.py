"""No import circles in ddcli, deferred imports inside functions included.

A circle holds when modules import each other, at the top or inside a function: each
module then needs the other half-built, and which one imports first decides whether
it works. The graph is read from the source (no module is imported), so the test is
fast and names the modules. One kind of edge is left out on purpose: a registry that
imports its members so they register (``core/objectives.py`` imports the modules whose
objectives call its ``register_objective``).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path, package: str = "ddcli") -> dict[str, Path]:
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, set[str]]:
    """The modules of ``known`` that ``name`` imports, each with the names it takes."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:  # `from package import module`
                    out.setdefault(sub, set())
                else:
                    out.setdefault(source, set()).add(alias.name)
    return {m: taken for m, taken in out.items() if m in known and m != name}


def import_graph(root: Path, package: str = "ddcli") -> dict[str, set[str]]:
    known = modules(root, package)
    taken = {name: imports(name, path, known) for name, path in known.items()}
    # A registry importing the modules that register with it is no circle of design.
    return {a: {b for b in targets
                if not any(n.startswith("register") for n in taken[b].get(a, ()))}
            for a, targets in taken.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_ddcli_has_no_import_circles():
    assert circles(import_graph(ROOT)) == []


def test_the_graph_sees_circles_through_deferred_and_relative_imports(tmp_path):
    # The check must be able to fail: a circle through a function-level import (as
    # evaluate/_sets.py <-> _evaluator_sets.py was) and one through a module-level
    # relative import (as config.py <-> layering.py was) are both found.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from pkg.sub.b import helper\n")
    (pkg / "sub" / "b.py").write_text("def helper():\n    from pkg.sub.a import x\n")
    (pkg / "c.py").write_text("X = 1\nfrom .d import y  # noqa: E402\n")
    (pkg / "d.py").write_text("from pkg.c import X\n")
    (pkg / "e.py").write_text("def register_e(f):\n    return f\nfrom pkg import f\n")
    (pkg / "f.py").write_text("from pkg.e import register_e\n")
    assert circles(import_graph(tmp_path, "pkg")) == [["pkg.c", "pkg.d"], ["pkg.sub.a", "pkg.sub.b"]]
