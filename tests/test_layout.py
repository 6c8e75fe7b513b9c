"""The harness's layout is its architecture: imports go one way down the data flow, with no circle.

Each subpackage's ``__init__`` docstring says what it may import; this test holds the tree to it,
reading every import statement (function-level ones included) with :mod:`ast`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "benchmarks"
TOP = {"benchmarks", "benchmarks.contract", "benchmarks.registry", "benchmarks.metrics", "benchmarks.records",
       "benchmarks.suite"}
#: subpackage -> the project packages its modules may import (besides their own subpackage)
ALLOWED = {
    "data": {"benchmarks.contract", "benchmarks.registry"},
    "audits": TOP | {"benchmarks.data"},
    "execution": TOP | {"benchmarks.data", "benchmarks.audits"},
    "reporting": TOP | {"benchmarks.data"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every ``benchmarks...`` module ``path`` imports (``from benchmarks import x`` gives benchmarks.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("benchmarks")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("benchmarks"):
            found |= {f"{node.module}.{a.name}" if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")
                                                     ).with_suffix(".py").exists()
                      or (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).is_dir()
                      else node.module for a in node.names}
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("sub", sorted(ALLOWED))
def test_each_subpackage_imports_only_what_its_docstring_allows(sub):
    bad = []
    for name, path in MODULES.items():
        if not under(name, f"benchmarks.{sub}"):
            continue
        for imported in project_imports(path):
            if under(imported, f"benchmarks.{sub}") or any(under(imported, a) if a != "benchmarks" else
                                                           imported == a for a in ALLOWED[sub]):
                continue
            bad.append(f"{name} imports {imported}")
    assert not bad, bad


def test_nothing_in_the_product_imports_the_measurement_tools():
    bad = [f"{name} imports {imported}" for name, path in MODULES.items() if not under(name, "benchmarks.perf")
           for imported in project_imports(path) if under(imported, "benchmarks.perf")]
    assert not bad, bad


def test_no_import_circle():
    graph = {name: {i for i in project_imports(path) if i in MODULES and i != name} for name, path in MODULES.items()}
    graph = {name: {i for i in deps if not name.startswith(i + ".")} for name, deps in graph.items()}  # own package
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else nxt)
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_every_subpackage_says_what_it_may_import():
    for sub in (*ALLOWED, "perf"):
        doc = ast.get_docstring(ast.parse((PACKAGE / sub / "__init__.py").read_text())) or ""
        assert "May import" in doc, sub
