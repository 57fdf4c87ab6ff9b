"""The package's layering (STYLE.md), read from the import statements of every module.

Edges (server, management) -> gateway -> dispatch, hub, registry -> connection, events,
records. Imports under ``TYPE_CHECKING`` and inside functions count: a type-only circle
still ties the modules together. Subpackages (registry/, integrations/) count as one unit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wsgateway

ROOT = Path(wsgateway.__file__).parent
PACKAGE = "wsgateway"
GATEWAY = f"{PACKAGE}.gateway"
REGISTRY = f"{PACKAGE}.registry"
# Above the gateway: the two edges (the console is part of the management edge) and what
# assembles and runs a node.
ABOVE = {f"{PACKAGE}.{name}" for name in ("server", "management", "console", "node", "cli", "workers", "__main__")}
BOTTOM = {f"{PACKAGE}.{name}" for name in ("connection", "events", "records")}


def _unit(module: str) -> str:
    """``wsgateway.registry.memory`` -> ``wsgateway.registry``: a subpackage is one unit."""
    return ".".join(module.split(".")[:2])


def _is_module(module: str) -> bool:
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The package modules that the file at ``path`` imports, anywhere in it."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = parts[:-1]  # for __init__.py too: relative imports start from its own package
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith(f"{PACKAGE}.") and _is_module(name)}


def _graph() -> dict[str, set[str]]:
    """Unit -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        unit = _unit(".".join(parts))
        deps = graph.setdefault(unit, set())
        deps.update(_unit(name) for name in _imports(path) if _unit(name) != unit)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of units, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        stack.append(unit)
        for dep in sorted(graph.get(unit, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[unit] = 2
        return None

    for unit in sorted(graph):
        if unit not in state and (found := visit(unit)) is not None:
            return found
    return None


def test_the_graph_sees_type_checking_and_relative_imports():
    graph = _graph()
    assert f"{PACKAGE}.hub" in graph[f"{PACKAGE}.exposition"]  # a TYPE_CHECKING import
    assert f"{PACKAGE}.events" in graph[GATEWAY]  # ``from . import events``
    assert f"{PACKAGE}.records" in graph[REGISTRY]  # from the subpackage's __init__
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle():
    assert _cycle(_graph()) is None


def test_only_the_gateway_imports_the_registry():
    importers = {unit for unit, deps in _graph().items() if REGISTRY in deps}
    assert importers == {GATEWAY}


def test_nothing_below_the_gateway_imports_it_or_the_edges():
    upper = ABOVE | {GATEWAY}
    offenders = {unit: deps & upper for unit, deps in _graph().items() if unit not in upper and deps & upper}
    assert offenders == {}


def test_the_bottom_layer_imports_no_layer_above_it():
    middle = {f"{PACKAGE}.{name}" for name in ("dispatch", "hub", "registry", "metrics", "integrations")}
    graph = _graph()
    assert graph.keys() >= BOTTOM
    upper = middle | ABOVE | {GATEWAY}
    offenders = {unit: graph[unit] & upper for unit in BOTTOM if graph[unit] & upper}
    assert offenders == {}
