"""Every package of ``src/tideflow`` has a layer and imports only from its own layer or lower
ones; no import cycles, between modules or between the packages of one layer.

The table is the architecture's map (``docs/architecture.md`` opens with it). A new package
or top-level module fails here until it is given a layer. Every import counts, also those
inside functions: an import deferred for start-up time is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tideflow

SRC = Path(tideflow.__file__).parent

LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"errors", "secrets"}),
    ("engine", {"core"}),
    ("stores and lookups", {"state", "topics", "registry", "sandbox", "results"}),
    ("pipeline model", {"spec", "builtin"}),
    ("components", {"operators", "connectors"}),
    (
        "running and the Python API",
        {
            "run",
            "observe",
            "api",
            "pipeline",
            "stream",
            "testing",
            "codegen",
        },
    ),
    ("interfaces", {"service", "cli", "__main__", "__init__"}),
]
LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def unit_of(module: str) -> str:
    """The package (or top-level module) of ``tideflow`` a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported tideflow module) for every import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from pkg import mod` depends on the module, `from mod import name` on mod.
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            if name.startswith("tideflow"):
                yield node.lineno, name


EDGES = {
    module: {(line, target) for line, target in imports(module, path) if target != module}
    for module, path in MODULES.items()
}


def test_every_package_has_a_layer() -> None:
    missing = sorted({unit_of(m) for m in MODULES} - set(LAYER_OF))
    assert not missing, f"give {missing} a layer in LAYERS ({__file__}) and in docs/architecture.md"


def offences(edges: dict[str, set[tuple[int, str]]]) -> list[str]:
    """Every import of a higher layer, as file:line and both layers."""
    found = []
    for module, imported in edges.items():
        here = LAYER_OF.get(unit_of(module))
        for line, target in sorted(imported):
            there = LAYER_OF.get(unit_of(target))
            if here is not None and there is not None and there > here:
                found.append(
                    f"{MODULES[module].relative_to(SRC.parent)}:{line} imports {target}: "
                    f"{unit_of(module)!r} ({LAYERS[here][0]}) may not use "
                    f"{unit_of(target)!r} ({LAYERS[there][0]}, a higher layer)"
                )
    return found


def test_imports_go_down_the_layers() -> None:
    assert not offences(EDGES), "\n".join(offences(EDGES))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph = {m: {t for _, t in edges if t in MODULES} for m, edges in EDGES.items()}
    assert not cycles(graph), cycles(graph)


def test_the_packages_of_a_layer_form_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for module, edges in EDGES.items():
        for _, target in edges:
            a, b = unit_of(module), unit_of(target)
            if a != b and LAYER_OF.get(a) == LAYER_OF.get(b):
                graph.setdefault(a, set()).add(b)
    assert not cycles(graph), cycles(graph)


def test_the_checker_sees_a_wrong_import() -> None:
    # The engine using the registry is what the table forbids; the check must catch it.
    wrong = {"tideflow.core.engine": {(7, "tideflow.registry")}}
    assert offences(wrong) == [
        "tideflow/core/engine.py:7 imports tideflow.registry: 'core' (engine) may not use "
        "'registry' (stores and lookups, a higher layer)"
    ]
    assert offences({"tideflow.registry": {(3, "tideflow.core.engine")}}) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
