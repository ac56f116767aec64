"""The shape of the package: no import cycles, and a data layer that knows nothing above it.

Every `import` counts, at module level or inside a function: a lazy import is still an
arrow in the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "app" / "taskq"

# The data layer: SQL, connections, the domain's models and errors. It may import only
# itself (and settings, which it is configured by).
DATA_LAYER = {
    "taskq.backoff",
    "taskq.db",
    "taskq.errors",
    "taskq.flow",
    "taskq.models",
    "taskq.queue",
    "taskq.settings",
    "taskq.sql",
    "taskq.stats",
    "taskq.validation",
    "taskq.workers",
    "taskq.workflows",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            targets |= {t for t in found if t in modules and t != name}
        graph[name] = targets
    return graph


def _package_edge(source: str, target: str) -> bool:
    """`from taskq.api import x` inside taskq.api.* is the package importing its own part."""
    return source.startswith(target + ".")


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if _package_edge(node, target):
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_data_layer_imports_nothing_above_it() -> None:
    graph = _graph()
    for module in DATA_LAYER:
        above = {t for t in graph[module] if t not in DATA_LAYER and t != "taskq"}
        assert above == set(), f"{module} imports {sorted(above)}"


def test_the_cli_does_not_import_the_http_package() -> None:
    graph = _graph()
    for module, targets in graph.items():
        if module.startswith("taskq.cli"):
            assert not any(t.startswith("taskq.api") for t in targets), module
