"""Turn a validated pipeline spec into a graph of components (``core.graph.Graph``).

Sources feed steps; each step reads from ``input`` (default: the previous step, or every
source for the first one); sinks read from ``input`` (default: the last step) and may filter
with ``when``. Inputs may only name earlier nodes, so the graph is acyclic by construction and
the declared order is a topological order.
"""

from __future__ import annotations

from typing import Any

from tideflow.core.contracts import MAIN_PORT, Kind, Source, Step
from tideflow.core.expressions import compile_expr
from tideflow.core.graph import Graph, Node
from tideflow.errors import ConfigError, ConfigIssue, render_path, suggest
from tideflow.registry import Registry


def _parse_ref(ref: str) -> tuple[str, str]:
    node, _, port = ref.partition(".")
    return node, port or MAIN_PORT


def check_graph(spec: Any, registry: Registry) -> list[tuple[tuple[str | int, ...], str]]:
    """Check that every input, given or default, names an earlier node and an existing port.

    Returns (field path, message) pairs so the loader can attach file lines.
    """
    issues: list[tuple[tuple[str | int, ...], str]] = []
    ports: dict[str, tuple[str, ...]] = {s.name: (MAIN_PORT,) for s in spec.all_sources}
    previous = [(s.name, MAIN_PORT) for s in spec.all_sources]

    def check(refs: list[tuple[str, str]], path: tuple[str | int, ...], given: bool) -> None:
        for node, port in refs:
            if node not in ports:
                issues.append((path, f"unknown input {node!r}; {suggest(node, ports)}"))
            elif port not in ports[node]:
                hint = "" if given else " (set `input:` to one of its outputs)"
                issues.append(
                    (
                        path,
                        f"{node!r} has no output {port!r}{hint}; it has: " + ", ".join(ports[node]),
                    )
                )

    # Column types known at each node's output, to check expressions before anything runs.
    types: dict[str, dict[str, Any]] = {
        s.name: registry.get("source", s.type).cls.declared_types(s)  # type: ignore[attr-defined]
        for s in spec.all_sources
    }

    def known(refs: list[tuple[str, str]]) -> dict[str, Any]:
        found = [types.get(node, {}) for node, _ in refs]
        if not found:
            return {}
        # Merged inputs: only a type every input agrees on is known.
        return {c: t for c, t in found[0].items() if all(f.get(c) == t for f in found[1:])}

    for i, step in enumerate(spec.steps):
        refs = [_parse_ref(r) for r in _as_list(step.input)] if step.input else previous
        check(refs, ("steps", i, "input") if step.input else ("steps", i), bool(step.input))
        cls = registry.get("step", step.type).cls
        ports[step.name] = cls.ports(step)  # type: ignore[attr-defined]
        before = known(refs)
        for field_path, problem in cls.type_issues(step, before):  # type: ignore[attr-defined]
            issues.append((("steps", i, *field_path), problem))
        types[step.name] = cls.output_types(step, before)  # type: ignore[attr-defined]
        previous = [(step.name, MAIN_PORT)]
    sink_key = "sinks" if spec.sinks is not None else "sink"
    for i, sink in enumerate(spec.all_sinks):
        base: tuple[str | int, ...] = (sink_key, i) if sink_key == "sinks" else ("sink",)
        refs = [_parse_ref(r) for r in _as_list(sink.input)] if sink.input else previous
        check(refs, (*base, "input") if sink.input else base, bool(sink.input))
        if sink.when:
            problem = compile_expr(sink.when, "when").check(known(refs))
            if problem:
                issues.append(((*base, "when"), problem))
    for i, alert in enumerate(getattr(spec, "alerts", None) or []):
        if alert.where and alert.step:
            problem = compile_expr(alert.where, "where").check(
                types.get(_parse_ref(alert.step)[0], {})
            )
            if problem:
                issues.append((("alerts", i, "where"), problem))
    return issues or _check_bounded_inputs(spec, registry)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def build_graph(spec: Any, registry: Registry) -> Graph:
    """Instantiate every component and wire the graph."""
    issues = check_graph(spec, registry)
    if issues:
        raise ConfigError([ConfigIssue(render_path(path), msg) for path, msg in issues])

    def make(kind: Kind, cfg: Any) -> Any:
        return registry.get(kind, cfg.type).cls(cfg)

    sources = [Node(s.name, "source", s.type, make("source", s)) for s in spec.all_sources]
    steps: list[Node] = []
    previous: list[tuple[str, str]] = [(s.name, MAIN_PORT) for s in sources]
    for cfg in spec.steps:
        inputs = [_parse_ref(r) for r in _as_list(cfg.input)] if cfg.input else previous
        node = Node(cfg.name, "step", cfg.type, make("step", cfg), inputs)
        steps.append(node)
        previous = [(node.name, MAIN_PORT)]
    sinks = []
    for i, cfg in enumerate(spec.all_sinks):
        inputs = [_parse_ref(r) for r in _as_list(cfg.input)] if cfg.input else previous
        when = compile_expr(cfg.when, f"sinks[{i}].when") if cfg.when else None
        sinks.append(Node(cfg.name, "sink", cfg.type, make("sink", cfg), inputs, when))
    consumers: dict[tuple[str, str], list[Node]] = {}
    for node in [*steps, *sinks]:
        for ref in node.inputs:
            consumers.setdefault(ref, []).append(node)
    return Graph(sources, steps, sinks, consumers)


def _check_bounded_inputs(spec: Any, registry: Registry) -> list[tuple[tuple[str | int, ...], str]]:
    """Refuse a step that emits only when its input ends (``bounded_input_only``) behind a
    source that never ends: it would run for ever and emit nothing, a quiet gap. A source
    says whether it ends once built from its settings (building one does no I/O); only
    the sources upstream of such a step are built."""
    issues: list[tuple[tuple[str | int, ...], str]] = []
    sources = {s.name: s for s in spec.all_sources}
    upstream: dict[str, set[str]] = {name: {name} for name in sources}
    previous = list(sources)
    for i, step in enumerate(spec.steps):
        names = [_parse_ref(r)[0] for r in _as_list(step.input)] if step.input else previous
        upstream[step.name] = set().union(*(upstream.get(n, set()) for n in names))
        previous = [step.name]
        cls = registry.get("step", step.type).cls
        need = cls.bounded_input_only(step) if issubclass(cls, Step) else None
        if need is None:
            continue
        endless = [n for n in sorted(upstream[step.name]) if not _ends(sources[n], registry)]
        if endless:
            field, why = need
            names_ = ", ".join(f"{n!r} ({sources[n].type})" for n in endless)
            issues.append((("steps", i, field), f"{why} (source {names_} does not end)"))
    return issues


def _ends(source: Any, registry: Registry) -> bool:
    try:
        component = registry.get("source", source.type).cls(source)
    except Exception:  # noqa: BLE001 - a source that cannot be built fails loudly when run
        return True
    return not isinstance(component, Source) or component.bounded
