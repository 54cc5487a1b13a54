"""The code's shape: no import cycle among the project's modules (counting imports inside
functions, which only hide one)."""

from __future__ import annotations

import ast
import re

from harness.fixtures import REPO

PACKAGES = ("lookalike", "deployments", "ingest")
# The base modules of the core: they import only each other (lookalike/__init__.py).
BASE = {f"lookalike.{name}" for name in ("settings", "errors", "limits", "retry", "machine", "ray_env")}


def _module(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(module: str, is_package: bool, source: str) -> set[str]:
    """The project's modules that ``module`` imports (a name imported from a package counts as
    the package, or as its module of that name when there is one)."""
    deps = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.split(".")[0] in PACKAGES:
                target = node.module
            else:
                continue
            deps |= {f"{target}.{a.name}" for a in node.names} | {target}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return deps


def import_graph() -> dict[str, set[str]]:
    files = {_module(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = _imports(name, path.name == "__init__.py", path.read_text())
        # "from pkg import name": the module pkg.name where there is one, else pkg itself
        deps = {d for d in deps if d in files} - {name}  # a module run as __main__ may import itself
        graph[name] = deps
    return graph


def layer(module: str) -> str:
    """The unit an import rule is about: a base module, a package of the core, or a top folder."""
    parts = module.split(".")
    if parts[0] != "lookalike" or module in BASE or len(parts) == 1:
        return module if module in BASE or len(parts) == 1 else parts[0]
    return ".".join(parts[:2])


def declared(unit: str) -> set[str]:
    """What a unit may import, as its package's docstring says ("May import: the base modules,
    lookalike.embedding and itself."); the base modules follow lookalike/__init__.py's."""
    if unit == "lookalike.cli":  # the command, over the whole core
        return {"lookalike", "lookalike.cli", *BASE, "lookalike.embedding", "lookalike.storage", "lookalike.milvus",
                "lookalike.indexing", "lookalike.quality", "lookalike.query"}
    if unit in ("deployments", "ingest"):  # the Ray layers, over the core (never its command line)
        # The service may start a batch job (a re-embed from the API); a job never imports the service.
        return {unit, *(declared("lookalike.cli") - {"lookalike.cli"}), *({"ingest"} if unit == "deployments" else ())}
    init = REPO / ("lookalike/__init__.py" if unit in BASE or unit == "lookalike" else unit.replace(".", "/") + "/__init__.py")
    if not init.exists():  # a layer of one module (lookalike/query.py)
        init = REPO / (unit.replace(".", "/") + ".py")
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "May import:" in doc, f"{init.relative_to(REPO)}'s docstring does not say what it may import"
    rule = " ".join(doc.split("May import:")[1].split())
    allowed = set(re.findall(r"lookalike\.\w+", rule)) | {unit, "lookalike"}
    if "the base modules" in rule:
        allowed |= BASE
    return allowed


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
    assert "lookalike.settings" in graph["lookalike.storage.store"]  # the graph is read, imports and all
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
    """harness/ serves the tests and the benchmarks and imports neither; the benchmarks (their
    smoke runs included) do not import the tests, and no test imports the benchmarks: what a
    test and a benchmark share lives in harness/."""
    harness = _top_level_imports("harness")
    assert {"harness/load.py", "harness/fixtures.py"} <= set(harness)
    assert {f: n & {"tests", "benchmarks"} for f, n in harness.items() if n & {"tests", "benchmarks"}} == {}
    benchmarks = _top_level_imports("benchmarks")
    assert "harness" in benchmarks["benchmarks/test_smoke.py"]
    assert {f for f, n in benchmarks.items() if "tests" in n} == set()
    tests = _top_level_imports("tests")
    assert "tests/test_load.py" in tests and "harness" in tests["tests/test_load.py"]
    assert {f for f, n in tests.items() if "benchmarks" in n} == set()


def test_no_benchmark_imports_another_ones_private_names():
    private = {f"{path.relative_to(REPO)}: {node.module}.{a.name}"
               for path in sorted((REPO / "benchmarks").glob("*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks")
               for a in node.names if a.name.startswith("_")}
    assert private == set()


def test_each_layer_imports_only_what_its_docstring_declares():
    """The core's packages show its layers: embedding and storage stand on the base modules,
    milvus on embedding, indexing and quality on those; deployments/ and ingest/ on the core."""
    graph = import_graph()
    assert {layer(m) for m in graph} >= {"lookalike.embedding", "lookalike.milvus", "lookalike.storage",
                                         "lookalike.indexing", "lookalike.quality", "lookalike.settings"}
    wrong = {f"{module} -> {dep}" for module, deps in graph.items() for dep in deps
             if layer(dep) not in declared(layer(module))}
    assert wrong == set()


def test_the_layer_rule_catches_an_import_against_the_direction():
    assert "lookalike.indexing" not in declared("lookalike.milvus")
    assert "lookalike.milvus" not in declared("lookalike.embedding")
    assert "lookalike.embedding" not in declared("lookalike.settings")
    assert "deployments" not in declared("ingest") and "lookalike.cli" not in declared("deployments")


# A repository path as code and docs name it: a top-level folder of ours, then a file with an
# extension (``deployments/metrics.py``, ``k8s/monitoring/lookalike-dashboard.json``).
NAMED_PATH = re.compile(r"(?<![\w./-])((?:lookalike|deployments|ingest|harness|benchmarks|tests|config|k8s|docs)"
                        r"/[\w./-]*\w\.(?:py|ya?ml|md|html|js|css|json|json\.gz|toml))(?![\w.])")


def missing_paths(text: str, where) -> set[str]:
    """The paths ``text`` names that exist neither from the repository's root nor from ``where``
    (the folder of the file that names them: a Markdown link is relative to it)."""
    return {p for p in NAMED_PATH.findall(text) if not (REPO / p).exists() and not (where / p).exists()}


def test_missing_paths_finds_a_moved_file(tmp_path):
    text = "the dashboard (``k8s/grafana/lookalike.json``); the words in lookalike/embedding/imagenet_words.json.gz"
    assert missing_paths(text, tmp_path) == {"k8s/grafana/lookalike.json"}
    assert missing_paths("see [it](benchmarks/quality.md)", REPO / "docs") == set()  # relative to docs/


def test_every_path_the_code_and_docs_name_exists():
    """A file moved or renamed leaves no docstring, comment or page pointing at its old place."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.yaml", "*.yml", "*.toml", "Makefile", "Dockerfile"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert "README.md" in tracked and "lookalike/milvus/catalog.py" in tracked
    scanned = [name for name in tracked  # this file's examples name moved files on purpose
               if (REPO / name).is_file() and name != "tests/test_layout.py"]
    missing = {f"{name}: {p}" for name in scanned
               for p in missing_paths((REPO / name).read_text(errors="replace"), (REPO / name).parent)}
    assert missing == set()
