"""The code's shape: no import cycle among the project's modules (counting imports inside
functions, which only hide one)."""

from __future__ import annotations

import ast

from .conftest import REPO

PACKAGES = ("lookalike", "deployments", "ingest")


def _imports(package: str, source: str) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package if node.level == 1 else ""
            deps |= {f"{base}.{node.module}"} if node.module else {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            deps.add(node.module)
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return deps


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for package in PACKAGES:
        for path in (REPO / package).glob("*.py"):
            name = f"{package}.{path.stem}"
            graph[name] = _imports(package, path.read_text()) - {name}  # a module run as __main__ may import itself
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None


def test_no_import_cycle():
    graph = import_graph()
    assert "lookalike.settings" in graph["lookalike.store"]  # the graph is read, imports and all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def _top_level_imports(folder: str) -> dict[str, set[str]]:
    """Each file of a folder: the top-level packages it imports (absolute imports only)."""
    found = {}
    for path in sorted((REPO / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
        found[str(path.relative_to(REPO))] = names
    return found


def test_the_harness_is_shared_one_way():
    """harness/ serves the tests and the benchmarks and imports neither; the benchmarks do not
    import the tests (the tests may import the benchmarks they test)."""
    harness = _top_level_imports("harness")
    assert "harness/load.py" in harness
    assert {f: n & {"tests", "benchmarks"} for f, n in harness.items() if n & {"tests", "benchmarks"}} == {}
    benchmarks = _top_level_imports("benchmarks")
    assert {f for f, n in benchmarks.items() if "tests" in n} == set()
